-- The live feed (GET /events/stream) in the order events became visible,
-- not the order they were numbered: a transaction may commit its events
-- after another's with higher `seq`, however long it stays open.
--
-- Each event records its transaction. A releaser (repo/jobs/feed.rs)
-- appends to `feed_log`, in (tx, seq) order, the events of transactions
-- older than every transaction still running (pg_snapshot_xmin): those are
-- all visible, and no event still to come can sort before them. Their
-- `pos` is the stream's event id.
ALTER TABLE job_events ADD COLUMN tx xid8;
ALTER TABLE job_events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX job_events_by_tx ON job_events (tx, seq) WHERE tx IS NOT NULL;

CREATE TABLE feed_log (
    pos          bigint PRIMARY KEY,
    customer_id  uuid NOT NULL,
    event_seq    bigint NOT NULL
);
CREATE INDEX feed_log_by_customer ON feed_log (customer_id, pos);

-- Where the releaser stands: the last (tx, seq) released and its pos.
CREATE TABLE feed_release (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    tx   xid8 NOT NULL,
    seq  bigint NOT NULL,
    pos  bigint NOT NULL
);

-- Events written before this migration are released now, in seq order.
INSERT INTO feed_log (pos, customer_id, event_seq)
SELECT row_number() OVER (ORDER BY seq), customer_id, seq FROM job_events;
INSERT INTO feed_release (tx, seq, pos)
VALUES ('0', 0, (SELECT count(*) FROM job_events));

-- Retention, and sending webhooks at any backlog.
--
-- Retention: the timeout-reaper prunes, in small batches, what is kept only
-- for a while (`[retention]`): finished webhook deliveries with their
-- attempts and outbox rows, finished notifications, and places in the live
-- feed. Each is found by age through an index, never by a scan. Job
-- history (jobs, job_events) is kept until the customer deletes the job.

-- When an event got its place in the feed.
ALTER TABLE feed_log ADD COLUMN released_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX feed_log_by_release ON feed_log (released_at);

CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (status, finished_at)
    WHERE status <> 'PENDING';
-- A delivery's events leave the outbox with it.
CREATE INDEX webhook_outbox_by_delivery ON webhook_outbox (delivery_id)
    WHERE delivery_id IS NOT NULL;

-- When a notification was sent, or given up on.
ALTER TABLE notifications ADD COLUMN finished_at timestamptz;
UPDATE notifications SET finished_at = COALESCE(sent_at, next_attempt_at)
 WHERE status <> 'PENDING';
CREATE INDEX notifications_finished ON notifications (finished_at)
    WHERE status <> 'PENDING';

-- Sending: a claim visits the endpoints with pending deliveries one index
-- probe each (a skip scan), and takes each one's oldest due; an endpoint's
-- long backlog is never scanned through.
CREATE INDEX webhook_deliveries_lanes ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'PENDING';
-- It replaces the index by due time alone, which nothing reads any more.
DROP INDEX webhook_deliveries_due;

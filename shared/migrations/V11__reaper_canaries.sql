-- A reaper's canaries: every tick it sends one through the reports queue,
-- the path agents' heartbeats take (RabbitMQ -> a dispatcher -> here). The
-- dispatcher that applies it records when it was sent. The reaper judges an
-- agent silent only against heartbeats that same path has carried: while
-- its canaries do not come back, silence is no evidence.
CREATE TABLE reaper_canaries (
    reaper_id  uuid PRIMARY KEY,
    sent_at    timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);

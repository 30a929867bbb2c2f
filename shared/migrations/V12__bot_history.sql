-- A bot's history: every change of its status with its cause (registered,
-- heartbeat after a loss, lost and why, declared by an admin or a legacy
-- bot), as job_events is the jobs'. The load's own AVAILABLE <-> BUSY flips
-- are not kept: they follow from the jobs' events.
CREATE TABLE bot_events (
    id           uuid PRIMARY KEY,
    bot_id       uuid NOT NULL REFERENCES bots(id) ON DELETE CASCADE,
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    cause        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bot_events_by_bot ON bot_events (bot_id, created_at);

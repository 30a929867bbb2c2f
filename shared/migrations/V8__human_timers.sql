-- flowBuild's `events` on a user task: timers that fire an event on the
-- task while it is open (a reminder before it expires, say). The reaper
-- fires them.
CREATE TABLE human_timers (
    id           uuid PRIMARY KEY,
    task_id      uuid NOT NULL REFERENCES human_tasks(id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    description  text NOT NULL,
    fired_at     timestamptz
);
CREATE INDEX human_timers_due ON human_timers (fire_at) WHERE fired_at IS NULL;

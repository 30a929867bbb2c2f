-- Leases: a running job whose run has a timeout carries the deadline by
-- which its bot must report an outcome; the reaper expires what passed it.

ALTER TABLE jobs ADD COLUMN lease_expires_at timestamptz;
CREATE INDEX jobs_lease ON jobs (lease_expires_at)
    WHERE status IN ('ASSIGNED', 'RUNNING') AND lease_expires_at IS NOT NULL;

-- The reaper's scan for silent agents, and their jobs.
CREATE INDEX bots_heartbeat ON bots (last_heartbeat_at) WHERE delivery = 'agent';

-- A run keeps the acls of its task as they were when it was created: its
-- output stays as private as its task was, even once the task is deleted.
ALTER TABLE jobs ADD COLUMN acls text[] NOT NULL DEFAULT '{}';

-- How many attempts a task's runs get when their bot is lost (NULL: the
-- reaper's `max_attempts`); each job keeps its task's value.
ALTER TABLE task_defs ADD COLUMN max_attempts integer CHECK (max_attempts BETWEEN 1 AND 100);
ALTER TABLE jobs ADD COLUMN max_attempts integer;

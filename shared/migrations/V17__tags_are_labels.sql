-- Seed 002: a task's `tags` are labels "para identificar fácilmente" (to
-- find tasks easily). They no longer decide where its runs go: placement by
-- labels is its own field, `required_tags`, every one of which the agent
-- must carry.
ALTER TABLE task_defs ADD COLUMN required_tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX task_defs_tags ON task_defs USING gin (tags);

-- A job's copy of its task's tags was only ever used for placement: it is
-- the job's required tags now. The runs written before this migration
-- copied labels, so they require nothing.
ALTER TABLE jobs RENAME COLUMN tags TO required_tags;
UPDATE jobs SET required_tags = '{}' WHERE required_tags <> '{}';

-- Why no registered bot can take a waiting job (its system has no bot, or
-- only draining ones; its host is gone; no agent carries its required
-- tags). Set with a WARNING event when seen, cleared when the job can be
-- placed again or leaves WAITING. NULL: nothing known against it.
ALTER TABLE jobs ADD COLUMN waiting_reason text;
CREATE INDEX jobs_stranded ON jobs (customer_id) WHERE waiting_reason IS NOT NULL;

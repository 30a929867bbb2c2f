-- What the dashboard's lists and overview read, served by indexes so they
-- stay fast with many jobs (orq-bench --dashboard measures them).

-- Lists filtered by status (`/tasks?status=`, `/{customer}/job?status=`),
-- newest first, and the overview's count of jobs by status (an index-only
-- scan) and its running jobs.
CREATE INDEX jobs_by_status ON jobs (customer_id, status, kind, id);

-- The overview's completed and failed per minute over the last hour.
CREATE INDEX jobs_finished ON jobs (customer_id, finished_at) INCLUDE (status)
    WHERE finished_at IS NOT NULL;

-- A bot's jobs (`?bot_id=`), newest first; also what deleting a bot sets
-- to NULL. A job has no bot when it is created, so inserts skip it.
CREATE INDEX jobs_by_bot ON jobs (bot_id, id) WHERE bot_id IS NOT NULL;

-- Failures the overview counts: only the failing rows are in these.
CREATE INDEX webhook_deliveries_failing ON webhook_deliveries (customer_id, status)
    WHERE status = 'DEAD' OR (status = 'PENDING' AND attempts > 0);
CREATE INDEX notifications_failing ON notifications (customer_id, status)
    WHERE status = 'DEAD' OR (status = 'PENDING' AND attempts > 0);

-- The tasks list filtered by system (`/tasks?system=`), newest first: a
-- rare system's tasks are found without reading the others'.
CREATE INDEX jobs_by_system ON jobs (customer_id, system, id) WHERE kind = 'system';

-- The matcher reads each free system's waiting jobs, oldest first, on its
-- own (a branch per system), and the script jobs on their own: a backlog
-- of a system no free bot declares is never read. One index entry
-- per waiting job in each, as a job is of one kind.
--
-- `jobs_waiting_order` stays: the overview's oldest waiting job, the sweep's
-- customers with waiting work and the stranded check read it.
CREATE INDEX jobs_waiting_system ON jobs (customer_id, system, created_at, id)
    WHERE status = 'WAITING' AND kind = 'system';
CREATE INDEX jobs_waiting_script ON jobs (customer_id, created_at, id)
    WHERE status = 'WAITING' AND kind = 'script';

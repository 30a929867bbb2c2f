-- The matcher scans one customer's waiting jobs oldest first and filters by
-- system afterwards. With `system` in the index, `system = ANY(...)` made
-- PostgreSQL read and sort every waiting job for each round.
CREATE INDEX jobs_waiting_order ON jobs (customer_id, created_at, id) WHERE status = 'WAITING';
DROP INDEX jobs_waiting;

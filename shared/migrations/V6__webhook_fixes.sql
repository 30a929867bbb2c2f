-- Outbox rows go with their events (a deleted job's owed events are owed no
-- more), and the live feed reads one customer's events by sequence.
ALTER TABLE webhook_outbox
    ADD CONSTRAINT webhook_outbox_event FOREIGN KEY (event_id) REFERENCES job_events(id) ON DELETE CASCADE;
CREATE INDEX webhook_outbox_by_event ON webhook_outbox (event_id);
DELETE FROM webhook_outbox o WHERE NOT EXISTS (SELECT 1 FROM job_events e WHERE e.id = o.event_id);

-- A redelivered delivery keeps its attempt log and numbering, and starts
-- the retry schedule again from this attempt.
ALTER TABLE webhook_deliveries ADD COLUMN schedule_from integer NOT NULL DEFAULT 0;

CREATE INDEX job_events_by_customer_seq ON job_events (customer_id, seq);

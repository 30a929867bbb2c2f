-- A statement that adds to the webhook outbox also notifies `orq_outbox`
-- (at its commit): the reapers' senders wake at once rather than at their
-- next tick, which stays as the safety net. One notification per
-- transaction at most (PostgreSQL folds repeats).
CREATE OR REPLACE FUNCTION webhook_outbox_from_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added bigint;
BEGIN
    INSERT INTO webhook_outbox (endpoint_id, event_seq, event_id, job_id)
    SELECT e.id, n.seq, n.id, n.job_id
      FROM new_events n
      JOIN jobs j ON j.id = n.job_id
      JOIN webhook_endpoints e ON e.id = j.callback_id AND e.enabled
    UNION ALL
    SELECT e.id, n.seq, n.id, n.job_id
      FROM new_events n
      JOIN human_tasks h ON h.id = n.job_id
      JOIN webhook_endpoints e ON e.id = h.callback_id AND e.enabled
    UNION ALL
    SELECT e.id, n.seq, n.id, n.job_id
      FROM new_events n
      JOIN webhook_endpoints e
        ON e.customer_id = n.customer_id AND e.kind = 'subscription' AND e.enabled
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    IF added > 0 THEN
        PERFORM pg_notify('orq_outbox', '');
    END IF;
    RETURN NULL;
END $$;

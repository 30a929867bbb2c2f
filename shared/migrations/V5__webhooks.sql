-- Webhooks: callbacks on jobs and tasks, customer-wide subscriptions, and the
-- outbox of deliveries the timeout-reaper sends.

-- Each customer signs its deliveries with one secret (Standard Webhooks),
-- sealed like task secrets, made on first use.
CREATE TABLE webhook_secrets (
    customer_id    uuid PRIMARY KEY REFERENCES customers(id) ON DELETE CASCADE,
    secret_sealed  bytea NOT NULL,
    rotated_at     timestamptz NOT NULL DEFAULT now()
);

-- Where deliveries go: a job's (or a task's) callback, or a subscription to
-- every job of the customer.
CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    customer_id      uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('callback', 'subscription')),
    url              text NOT NULL,
    username         text,
    -- Sent as the `password` header; never returned by any read.
    password_sealed  bytea,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions ON webhook_endpoints (customer_id)
    WHERE kind = 'subscription' AND enabled;

ALTER TABLE jobs ADD COLUMN callback_id uuid REFERENCES webhook_endpoints(id) ON DELETE SET NULL;
ALTER TABLE task_defs ADD COLUMN callback_id uuid REFERENCES webhook_endpoints(id) ON DELETE SET NULL;

-- Events owed to endpoints, in the order they happened; `delivery_id` once
-- a delivery carries them.
CREATE TABLE webhook_outbox (
    endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_seq    bigint NOT NULL,
    event_id     uuid NOT NULL,
    job_id       uuid NOT NULL,
    delivery_id  uuid,
    PRIMARY KEY (endpoint_id, event_seq)
);
CREATE INDEX webhook_outbox_unsent ON webhook_outbox (endpoint_id, job_id, event_seq)
    WHERE delivery_id IS NULL;

-- One POST of a JSON array of events, retried as is: its id is the
-- `webhook-id` every attempt carries.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    customer_id      uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    job_id           uuid NOT NULL,
    body             jsonb NOT NULL,
    status           text NOT NULL CHECK (status IN ('PENDING', 'DELIVERED', 'DEAD')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A reaper sending it holds it until then.
    claimed_until    timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- Events of one job reach one endpoint in order: one open delivery at a time.
CREATE UNIQUE INDEX webhook_deliveries_one_open ON webhook_deliveries (endpoint_id, job_id)
    WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_by_customer ON webhook_deliveries (customer_id, id);

CREATE TABLE webhook_attempts (
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    n             integer NOT NULL,
    attempted_at  timestamptz NOT NULL,
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL,
    PRIMARY KEY (delivery_id, n)
);

-- The outbox is written by the statement that writes the events, whatever
-- code path that is: a change and the deliveries it owes commit together.
CREATE FUNCTION webhook_outbox_from_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (endpoint_id, event_seq, event_id, job_id)
    SELECT e.id, n.seq, n.id, n.job_id
      FROM new_events n
      JOIN jobs j ON j.id = n.job_id
      JOIN webhook_endpoints e ON e.id = j.callback_id AND e.enabled
    UNION ALL
    SELECT e.id, n.seq, n.id, n.job_id
      FROM new_events n
      JOIN webhook_endpoints e
        ON e.customer_id = n.customer_id AND e.kind = 'subscription' AND e.enabled
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER job_events_outbox AFTER INSERT ON job_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_from_events();

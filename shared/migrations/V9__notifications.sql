-- Field workers' contacts, for notifications: their e-mail is their
-- identity; a phone (SMS) and a device token (push) when they gave them.
CREATE TABLE workers (
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    email        text NOT NULL,
    phone        text,
    push_token   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, email)
);

-- What workers are told (their finish was processed), one row per channel,
-- written in the transaction that processed the finish and sent by the
-- timeout-reaper with retries: a failing sender never holds up processing.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    customer_id      uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    task_id          uuid,
    channel          text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    recipient        text NOT NULL,
    subject          text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'DEAD')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A reaper sending it holds it until then.
    claimed_until    timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX notifications_by_task ON notifications (customer_id, task_id);

-- Idempotency-Key on every create: one row per (customer, credential,
-- operation, key)
-- holding what was asked (a SHA-256 of the canonical request) and what was
-- answered (status and body, sealed with security.secret_key, since some
-- answers carry a secret shown once). The row is inserted first in the
-- transaction that creates the resource and completed before it commits,
-- so a create and its key are durable together: a retry after a crash
-- between the commit and the answer finds the answer, and a concurrent
-- duplicate waits on the primary key until the first commits.
CREATE TABLE idempotency_keys (
    customer_id   uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    -- The credential that sent it (`token:<id>`, `secret:<task id>`): one
    -- caller's keys never answer another's requests.
    scope         text NOT NULL,
    -- What is created (`tasks.create`, `jobs.create`, ...): a key is
    -- scoped to one kind of create.
    operation     text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    -- NULL only inside the creating transaction, never once committed.
    status_code   smallint,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, scope, operation, key)
);

-- Pruning keys past their retention (the timeout-reaper).
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

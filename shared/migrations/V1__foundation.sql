-- Tenants, credentials, bots, jobs and their event history.

CREATE TABLE customers (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is kept; the token itself is shown once.
CREATE TABLE tokens (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('viewer', 'user', 'admin', 'bot')),
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE bots (
    id                 uuid PRIMARY KEY,
    customer_id        uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    name               text NOT NULL,
    ip_address         text NOT NULL,
    port               integer NOT NULL DEFAULT 5000 CHECK (port BETWEEN 1 AND 65535),
    status             text NOT NULL CHECK (status IN ('AVAILABLE', 'BUSY', 'UNAVAILABLE')),
    delivery           text NOT NULL CHECK (delivery IN ('agent', 'http')),
    capacity           integer NOT NULL DEFAULT 1 CHECK (capacity > 0),
    -- Jobs ASSIGNED or RUNNING on this bot; kept in the transactions that move them.
    active_jobs        integer NOT NULL DEFAULT 0 CHECK (active_jobs >= 0),
    systems            text[] NOT NULL DEFAULT '{}',
    tags               text[] NOT NULL DEFAULT '{}',
    -- A draining bot takes no new work and finishes what it has.
    draining           boolean NOT NULL DEFAULT false,
    last_heartbeat_at  timestamptz,
    last_assigned_at   timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, name)
);
CREATE INDEX bots_customer_ip ON bots (customer_id, ip_address);

CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    kind         text NOT NULL DEFAULT 'system',
    description  text NOT NULL,
    system       text NOT NULL,
    attachment   text NOT NULL,
    rows_total   integer NOT NULL DEFAULT 0,
    status       text NOT NULL CHECK (status IN
                   ('WAITING', 'ASSIGNED', 'RUNNING', 'COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED')),
    bot_id       uuid REFERENCES bots(id) ON DELETE SET NULL,
    -- Incremented at every assignment; reports name the attempt they belong to.
    attempt      integer NOT NULL DEFAULT 0,
    percent      smallint NOT NULL DEFAULT 0,
    rows_done    integer NOT NULL DEFAULT 0,
    error        text,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    assigned_at  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz
);
-- The matcher's scan: oldest waiting work of one customer first.
CREATE INDEX jobs_waiting ON jobs (customer_id, system, created_at, id) WHERE status = 'WAITING';
CREATE INDEX jobs_customer_list ON jobs (customer_id, id);
CREATE INDEX jobs_active_by_bot ON jobs (bot_id) WHERE status IN ('ASSIGNED', 'RUNNING');
CREATE INDEX jobs_assigned_since ON jobs (assigned_at) WHERE status = 'ASSIGNED';

-- Every transition and report: the audit history, the source of webhooks and
-- the dashboard's feed. `id` is the id of the message that caused it when
-- there was one, which makes re-applying a redelivered report a no-op.
CREATE TABLE job_events (
    id           uuid PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    customer_id  uuid NOT NULL,
    type         text NOT NULL CHECK (type IN
                   ('STATUS_CHANGE', 'PERCENT_CHANGE', 'STEP_CHANGE', 'ERROR', 'WARNING')),
    description  text NOT NULL,
    from_status  text,
    to_status    text,
    bot_id       uuid,
    attempt      integer,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_by_job ON job_events (job_id, created_at, id);

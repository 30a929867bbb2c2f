-- TheEye's model: scripts and task definitions per customer, and script jobs
-- (one run of a task definition on an agent bot) in the one jobs table.

-- Who holds a token (a user's e-mail, say): a task's `acls` name holders.
ALTER TABLE tokens ADD COLUMN name text;

CREATE TABLE scripts (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    name         text NOT NULL,
    filename     text NOT NULL,
    description  text NOT NULL DEFAULT '',
    content      bytea NOT NULL,
    -- SHA-256 of content, hex: agents cache scripts by it.
    checksum     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, name)
);

CREATE TABLE task_defs (
    id              uuid PRIMARY KEY,
    customer_id     uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    -- The bot it runs on; NULL: any agent bot carrying all of `tags`.
    host_id         uuid REFERENCES bots(id),
    script_id       uuid NOT NULL REFERENCES scripts(id),
    tags            text[] NOT NULL DEFAULT '{}',
    task_arguments  jsonb NOT NULL DEFAULT '[]',
    run_as          text NOT NULL DEFAULT '%script%',
    acls            text[] NOT NULL DEFAULT '{}',
    triggers        jsonb NOT NULL DEFAULT '[]',
    grace_time      integer NOT NULL DEFAULT 0 CHECK (grace_time >= 0),
    timeout         integer NOT NULL DEFAULT 600 CHECK (timeout > 0),
    multitasking    boolean NOT NULL DEFAULT true,
    env             jsonb NOT NULL DEFAULT '{}',
    -- The secret key: its SHA-256 to check a presented key, and the key
    -- itself sealed (AES-256-GCM) for the admins' credentials route.
    secret_hash     bytea NOT NULL,
    secret_sealed   bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_defs_customer ON task_defs (customer_id, id);

ALTER TABLE jobs
    ADD CONSTRAINT jobs_kind CHECK (kind IN ('system', 'script')),
    ADD COLUMN task_id          uuid REFERENCES task_defs(id) ON DELETE SET NULL,
    -- Matching constraints copied from the task when the job was created.
    ADD COLUMN host_id          uuid,
    ADD COLUMN tags             text[] NOT NULL DEFAULT '{}',
    ADD COLUMN multitasking     boolean NOT NULL DEFAULT true,
    -- What the bot runs: script id and checksum, run_as, arguments, env, timeout.
    ADD COLUMN spec             jsonb,
    ADD COLUMN idempotency_key  text,
    -- SHA-256 of what the first request with that key asked for.
    ADD COLUMN request_hash     bytea,
    -- A triggered run waits until then (its grace time) before it is matched.
    ADD COLUMN not_before       timestamptz,
    ADD COLUMN triggered_by     uuid,
    ADD COLUMN exit_code        integer,
    ADD COLUMN output           jsonb,
    ADD COLUMN step             text;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (customer_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_task ON jobs (task_id, id) WHERE task_id IS NOT NULL;
-- A job triggers each task at most once.
CREATE UNIQUE INDEX jobs_triggered_once ON jobs (triggered_by, task_id)
    WHERE triggered_by IS NOT NULL;

-- The order events happened in: several events written by one statement
-- share their created_at, and their ids need not be ordered.
ALTER TABLE job_events ADD COLUMN seq bigserial;
CREATE INDEX job_events_by_job_seq ON job_events (job_id, seq);

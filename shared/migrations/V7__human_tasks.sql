-- Human tasks: micro-tasks done by field workers (reserve, start, finish)
-- and flowBuild user tasks (commit, submit), their executions, and every
-- finish submission received, applied or not.

-- Field workers hold tokens bound to their e-mail (the token's `name`).
ALTER TABLE tokens DROP CONSTRAINT tokens_role_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_role_check
    CHECK (role IN ('viewer', 'user', 'admin', 'bot', 'worker'));
ALTER TABLE tokens ADD CONSTRAINT tokens_worker_named
    CHECK (role <> 'worker' OR name IS NOT NULL);

CREATE TABLE human_tasks (
    id                uuid PRIMARY KEY,
    customer_id       uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('micro_task', 'user_task')),
    -- flowBuild's `action`; the micro-task's `task_info.name`.
    action            text NOT NULL,
    version           integer NOT NULL DEFAULT 1,
    -- flowBuild's `input`; for a micro-task `{task_flow, variables}`.
    input             jsonb NOT NULL,
    activity_schema   jsonb,
    result_schema     jsonb,
    activity_manager  text NOT NULL DEFAULT 'commit' CHECK (activity_manager IN ('commit', 'notify')),
    -- What a passed deadline does: back to NEW for someone else, or submit
    -- what there is with `is_continue = true`.
    on_timeout        text NOT NULL CHECK (on_timeout IN ('requeue', 'continue')),
    -- How long a started execution may take.
    execution_ms      bigint NOT NULL CHECK (execution_ms > 0),
    status            text NOT NULL CHECK (status IN
                        ('NEW', 'RESERVED', 'EXECUTING', 'SUBMITTED', 'COMPLETE', 'REJECTED', 'ERROR')),
    -- The worker (e-mail) holding or executing it.
    worker            text,
    execution_id      uuid,
    -- The one instant the reaper watches: the reservation's end, the
    -- execution's end or the user task's timeout, whichever applies now.
    deadline          timestamptz,
    -- A user task's absolute timeout, fixed at creation.
    expires_at        timestamptz,
    -- A user task's last committed (partial) answer.
    committed         jsonb,
    result            jsonb,
    error             text,
    is_continue       boolean NOT NULL DEFAULT false,
    events            jsonb NOT NULL DEFAULT '[]',
    callback_id       uuid REFERENCES webhook_endpoints(id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX human_tasks_deadline ON human_tasks (deadline) WHERE deadline IS NOT NULL;
-- Workers reserve the oldest NEW task (of a name) first.
CREATE INDEX human_tasks_new ON human_tasks (customer_id, created_at, id) WHERE status = 'NEW';
CREATE INDEX human_tasks_held ON human_tasks (customer_id, worker) WHERE status IN ('RESERVED', 'EXECUTING');
CREATE INDEX human_tasks_list ON human_tasks (customer_id, id);

-- One start of a task by a worker; a task requeued and started again has
-- several.
CREATE TABLE human_executions (
    id            uuid PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES human_tasks(id) ON DELETE CASCADE,
    customer_id   uuid NOT NULL,
    worker        text NOT NULL,
    status        text NOT NULL CHECK (status IN
                    ('EXECUTING', 'COMPLETE', 'REJECTED', 'ERROR', 'EXPIRED')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    deadline      timestamptz NOT NULL,
    -- From the finish body: the answers, where and when, the worker's NPS.
    answers       jsonb,
    location      jsonb,
    nps           jsonb,
    timings       jsonb,
    -- When the gateway accepted the finish, and when it was applied.
    submitted_at  timestamptz,
    finished_at   timestamptz,
    reason        text
);
CREATE INDEX human_executions_by_task ON human_executions (task_id, started_at);

-- Every finish the gateway accepted (202), as received, with what became of
-- it: nothing accepted is dropped.
CREATE TABLE human_submissions (
    id            uuid PRIMARY KEY,
    customer_id   uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    -- As the path named it; it may name no task at all.
    task_id       uuid NOT NULL,
    execution_id  text,
    worker        text NOT NULL,
    body          jsonb NOT NULL,
    body_hash     bytea NOT NULL,
    received_at   timestamptz NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    outcome       text NOT NULL CHECK (outcome IN ('APPLIED', 'REJECTED', 'DUPLICATE')),
    reason        text
);
CREATE INDEX human_submissions_by_task ON human_submissions (customer_id, task_id, received_at);

-- The event table is the history of every piece of work, jobs and human
-- tasks alike (`job_id` names either; both take v7 UUIDs), so it can no
-- longer reference `jobs`: deleting either deletes its events instead.
ALTER TABLE job_events DROP CONSTRAINT job_events_job_id_fkey;

CREATE FUNCTION delete_work_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_events e USING old_rows o WHERE e.job_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_delete_events AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delete_work_events();
CREATE TRIGGER human_tasks_delete_events AFTER DELETE ON human_tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delete_work_events();

-- Callbacks of human tasks get their events like jobs' do.
CREATE OR REPLACE FUNCTION webhook_outbox_from_events() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;

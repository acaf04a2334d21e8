-- A submit in one statement (issue 21, the fast submit path): the queue bound, the key's lock, its
-- open tasks and credits, the idempotency check, the job and the task row, in one server-side call.
-- The key's row is locked only while this function runs, not across the API's round trips, so one
-- key's submits no longer queue behind each other's network and event-loop waits.
--
-- The rules are PostgresRepository.create_task's (tasks/postgres.py; the contract suite checks both
-- repositories against them). Each statement of a PL/pgSQL function takes its own snapshot (READ
-- COMMITTED): the balance is read by a statement that starts after the key's lock is held, so it sees
-- the tasks of the submit it waited for, and two submits never spend the same credits.
--
-- The job is queued through procrastinate's own defer function (procrastinate_defer_jobs_v1, the one
-- its `defer_jobs` statement calls; tests/unit/test_submit_statement.py pins it), so procrastinate's
-- insert trigger notifies the workers as for any deferred job.
--
-- Returns one row: outcome is 'created' (task_uid is the new task), 'repeat' (task_uid is the task an
-- earlier copy of the request made; nothing written), 'conflict' (the request_uuid was used with other
-- parameters; task_uid is that task), 'queue_full', 'open_cap' or 'credits' (nothing written), with
-- the counts the refusal names.
CREATE FUNCTION picserve_submit_task_v1(
    p_task_uid text,
    p_public_key text,
    p_action text,
    p_spec_kind text,
    p_spec_version integer,
    p_spec jsonb,
    p_cost bigint,
    p_model_code text,
    p_loras text[],
    p_webhook_url text,
    p_webhook_events text[],
    p_max_open_tasks integer,   -- 0: no cap
    p_max_queued bigint,        -- NULL: no bound
    p_request_uuid text,        -- NULL: no idempotency
    p_fingerprint text,
    p_window double precision,
    p_queue text,
    p_task_name text
)
    RETURNS TABLE (outcome text, task_uid text, queued bigint, open_count bigint, available bigint)
    LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_queued bigint := 0;
    v_open bigint := 0;
    v_available bigint := 0;
    v_fingerprint text;
    v_earlier text;
    v_job bigint;
BEGIN
    IF p_max_queued IS NOT NULL THEN
        -- counting stops at the bound: the check costs the bound, not the queue
        SELECT count(*) INTO v_queued FROM (
            SELECT 1 FROM picserve_tasks t WHERE t.status = 'Queuing' LIMIT p_max_queued
        ) AS q;
        IF v_queued >= p_max_queued THEN
            RETURN QUERY SELECT 'queue_full'::text, NULL::text, v_queued, 0::bigint, 0::bigint;
            RETURN;
        END IF;
    END IF;

    PERFORM 1 FROM picserve_keys k WHERE k.public_key = p_public_key FOR UPDATE;

    -- a new statement, a new snapshot: it sees what the submit this one waited for committed
    SELECT o.n, k.total_credits - k.used_credits - o.cost, r.fingerprint, r.task_uid
    INTO v_open, v_available, v_fingerprint, v_earlier
    FROM picserve_keys k
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, COALESCE(sum(t.cost), 0) AS cost FROM picserve_tasks t
        WHERE t.public_key = k.public_key AND t.status IN ('Queuing', 'Running')
    ) AS o
    LEFT JOIN picserve_requests r ON r.public_key = k.public_key AND r.request_uuid = p_request_uuid
        AND r.created_at > now() - make_interval(secs => coalesce(p_window, 0))
    WHERE k.public_key = p_public_key;
    IF NOT FOUND THEN
        v_open := 0;
        v_available := 0;
    END IF;

    IF v_earlier IS NOT NULL THEN
        RETURN QUERY SELECT
            CASE WHEN v_fingerprint = p_fingerprint THEN 'repeat' ELSE 'conflict' END,
            v_earlier, v_queued, v_open, v_available;
        RETURN;
    END IF;
    IF p_max_open_tasks > 0 AND v_open >= p_max_open_tasks THEN
        RETURN QUERY SELECT 'open_cap'::text, NULL::text, v_queued, v_open, v_available;
        RETURN;
    END IF;
    IF v_available < p_cost THEN
        RETURN QUERY SELECT 'credits'::text, NULL::text, v_queued, v_open, v_available;
        RETURN;
    END IF;

    -- procrastinate's defer of one job (priority 0, no lock, now), as `defer_async` makes it
    v_job := (procrastinate_defer_jobs_v1(ARRAY[
        ROW(p_queue, p_task_name, 0, NULL, NULL, jsonb_build_object('task_uid', p_task_uid), NULL)
            ::procrastinate_job_to_defer_v1
    ]))[1];

    -- model_code and loras: what the workers' fetch routes the task by (worker/routing.py)
    INSERT INTO picserve_tasks (task_uid, public_key, action, status, spec_kind, spec_version, spec, cost,
                                model_code, loras, webhook_url, webhook_events, job_id)
    VALUES (p_task_uid, p_public_key, p_action, 'Queuing', p_spec_kind, p_spec_version, p_spec, p_cost,
            p_model_code, p_loras, p_webhook_url, p_webhook_events, v_job);

    IF p_request_uuid IS NOT NULL THEN
        -- replaces a row of its request_uuid older than the window
        INSERT INTO picserve_requests (public_key, request_uuid, fingerprint, task_uid)
        VALUES (p_public_key, p_request_uuid, p_fingerprint, p_task_uid)
        ON CONFLICT (public_key, request_uuid) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, task_uid = EXCLUDED.task_uid, created_at = now();
    END IF;

    RETURN QUERY SELECT 'created'::text, p_task_uid, v_queued, v_open, v_available;
END;
$$;

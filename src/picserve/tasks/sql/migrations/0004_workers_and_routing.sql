-- Many GPUs, many machines: the worker registry, model-affinity routing and fair share between keys.
-- tasks/routing.py's docstring explains the design; tasks/registry.py writes picserve_workers.

-- Per-key scheduling: a higher priority is served first (strictly); among keys of equal priority, the
-- key with the fewest running tasks per unit of weight is served first.
ALTER TABLE picserve_keys ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE picserve_keys ADD COLUMN weight double precision NOT NULL DEFAULT 1 CHECK (weight > 0);

-- When each key was last served a job: the round-robin between keys that are equally served. Its own
-- table, so that a fetch never waits for the key row a submit holds locked.
CREATE TABLE picserve_key_shares (
    public_key     text PRIMARY KEY REFERENCES picserve_keys (public_key) ON DELETE CASCADE,
    last_served_at timestamptz NOT NULL
);

-- What the fetch routes a task by, copied out of its spec at create_task: its main model, and its
-- LoRAs as the engine names its adapters ('lora_' + the code with non-word characters as '_', here
-- without the prefix), sorted and distinct.
ALTER TABLE picserve_tasks ADD COLUMN model_code text;
ALTER TABLE picserve_tasks ADD COLUMN loras text[] NOT NULL DEFAULT '{}';
UPDATE picserve_tasks SET
    model_code = spec->>'model_code',
    loras = ARRAY(
        SELECT DISTINCT regexp_replace(s->>'code', '\W', '_', 'g')
        FROM jsonb_array_elements(coalesce(spec->'sub_models', '[]'::jsonb)) AS s
        WHERE s->>'kind' = 'lora'
        ORDER BY 1
    );
-- A key's queued tasks in queue order (the keys with queued work, and each key's next task), and by
-- main model (a worker's next task of a model it holds).
CREATE INDEX picserve_tasks_queued_by_key ON picserve_tasks (public_key, job_id) WHERE status = 'Queuing';
CREATE INDEX picserve_tasks_queued_by_model ON picserve_tasks (public_key, model_code, job_id)
    WHERE status = 'Queuing';

-- The worker registry: one row per worker process, written when it starts, after every task and on
-- its heartbeat; deleted on a clean exit, and by the stalled-worker sweep once long silent.
CREATE TABLE picserve_workers (
    name           text PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    device         text NOT NULL,
    gpu            text,
    gpu_memory     bigint,
    -- main models (ModelCodes) and LoRAs (adapter names, as picserve_tasks.loras) it holds
    main_models    text[] NOT NULL DEFAULT '{}',
    loras          text[] NOT NULL DEFAULT '{}',
    -- main models it keeps loaded at once (PICSERVE_MAX_LOADED_MODELS): what a fetch predicts it evicts
    model_slots    integer NOT NULL DEFAULT 1,
    tasks_done     bigint NOT NULL DEFAULT 0,
    model_loads    bigint NOT NULL DEFAULT 0,
    current_task   text,
    current_model  text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX picserve_workers_heartbeat ON picserve_workers (last_heartbeat);

-- One of `p_key`'s queued jobs, locked (FOR UPDATE SKIP LOCKED, as procrastinate's fetch), or NULL.
-- Its job filters are those of procrastinate 3.10's procrastinate_fetch_job_v2: todo, in one of the
-- queues, due, and first of its lock (written out twice: a function call per row costs 10x). A job without a lock skips the lock's
-- subquery: as procrastinate writes it, the planner hashes every job to check it.
-- With `p_model`: the oldest of its jobs for that main model, preferring, among its next 100, one
-- whose LoRAs are all in `p_loras`. Without: its oldest job that this worker may take, i.e. whose
-- model is not in `p_reserved` (held by another live worker) or has waited `p_patience` already.
CREATE FUNCTION picserve_pick_job_v1(
    p_key text,
    p_model text,
    p_loras text[],
    p_reserved text[],
    p_patience interval,
    target_queue_names character varying[]
)
    RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    picked bigint;
BEGIN
    IF p_model IS NOT NULL THEN
        SELECT jobs.id INTO picked
            FROM (
                SELECT t.job_id, t.loras <@ p_loras AS lora_hit
                    FROM picserve_tasks AS t
                    WHERE t.status = 'Queuing' AND t.public_key = p_key AND t.model_code = p_model
                    ORDER BY t.job_id
                    LIMIT 100
            ) AS c
            JOIN procrastinate_jobs AS jobs ON jobs.id = c.job_id
            WHERE jobs.status = 'todo'
                AND (target_queue_names IS NULL OR jobs.queue_name = ANY(target_queue_names))
                AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
                AND (jobs.lock IS NULL OR NOT EXISTS (  -- the first job of its lock (procrastinate's rule)
                    SELECT 1 FROM procrastinate_jobs AS other_jobs
                    WHERE other_jobs.lock = jobs.lock
                        AND (other_jobs.status = 'doing'
                             OR (other_jobs.status = 'todo'
                                 AND (other_jobs.priority > jobs.priority
                                      OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id))))
                ))
            ORDER BY c.lora_hit DESC, jobs.id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED;
    ELSE
        SELECT jobs.id INTO picked
            FROM picserve_tasks AS t
            JOIN procrastinate_jobs AS jobs ON jobs.id = t.job_id
            WHERE t.status = 'Queuing' AND t.public_key = p_key
                AND (t.model_code IS NULL OR NOT (t.model_code = ANY(p_reserved))
                     OR t.created_at <= now() - p_patience)
                AND jobs.status = 'todo'
                AND (target_queue_names IS NULL OR jobs.queue_name = ANY(target_queue_names))
                AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
                AND (jobs.lock IS NULL OR NOT EXISTS (  -- the first job of its lock (procrastinate's rule)
                    SELECT 1 FROM procrastinate_jobs AS other_jobs
                    WHERE other_jobs.lock = jobs.lock
                        AND (other_jobs.status = 'doing'
                             OR (other_jobs.status = 'todo'
                                 AND (other_jobs.priority > jobs.priority
                                      OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id))))
                ))
            ORDER BY t.job_id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED;
    END IF;
    RETURN picked;
END;
$$;

-- picserve's replacement of procrastinate_fetch_job_v2 for the generation workers (routing.py):
-- the same filters, lock and update, with the job chosen by key priority, fair share and model
-- affinity. Called with the worker's procrastinate id and its picserve name. One row, as
-- procrastinate's: the job taken, or all NULL. Its columns are spelled out (no procrastinate type in
-- a signature), so that picserve's migrations run on a database without procrastinate's schema yet.
CREATE FUNCTION picserve_fetch_job_v1(
    target_queue_names character varying[],
    p_worker_id bigint,
    p_worker text,
    p_affinity_wait double precision,
    p_live_after double precision
)
    RETURNS TABLE (
        id bigint,
        queue_name character varying,
        task_name character varying,
        priority integer,
        lock text,
        queueing_lock text,
        args jsonb,
        status text,
        scheduled_at timestamptz,
        attempts integer,
        abort_requested boolean,
        worker_id bigint
    )
    LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    affinity boolean := p_affinity_wait > 0;
    patience interval := make_interval(secs => greatest(p_affinity_wait, 0));
    held text[] := '{}';
    held_loras text[] := '{}';
    reserved text[] := '{}';
    tier record;
    k text;
    m text;
    picked bigint;
BEGIN
    IF affinity THEN
        SELECT w.main_models, w.loras INTO held, held_loras FROM picserve_workers AS w WHERE w.name = p_worker;
        held := coalesce(held, '{}');
        held_loras := coalesce(held_loras, '{}');
        -- models another live worker holds: their jobs wait for it, `patience` at most
        SELECT coalesce(array_agg(DISTINCT model), '{}') INTO reserved
            FROM picserve_workers AS w, unnest(w.main_models) AS model
            WHERE w.name <> p_worker
                AND w.last_heartbeat > now() - make_interval(secs => p_live_after)
                AND NOT (model = ANY(held));
    END IF;

    <<tiers>>
    FOR tier IN
        WITH RECURSIVE active(public_key) AS (
            -- the keys with queued tasks: a loose index scan, one probe per key
            (SELECT t.public_key FROM picserve_tasks AS t WHERE t.status = 'Queuing'
                ORDER BY t.public_key LIMIT 1)
            UNION ALL
            SELECT (SELECT t.public_key FROM picserve_tasks AS t
                        WHERE t.status = 'Queuing' AND t.public_key > a.public_key
                        ORDER BY t.public_key LIMIT 1)
                FROM active AS a WHERE a.public_key IS NOT NULL
        ),
        running AS (
            SELECT t.public_key, count(*) AS n
                FROM procrastinate_jobs AS j JOIN picserve_tasks AS t ON t.job_id = j.id
                WHERE j.status = 'doing' AND j.worker_id IS NOT NULL
                GROUP BY t.public_key
        ),
        keyed AS (
            SELECT a.public_key,
                   coalesce(keys.priority, 0) AS priority,
                   coalesce(r.n, 0) / coalesce(keys.weight, 1) AS share,
                   s.last_served_at,
                   oldest.job_id AS oldest_job,
                   affinity AND coalesce(s.last_served_at, oldest.created_at) <= now() - patience AS starving
                FROM active AS a
                LEFT JOIN picserve_keys AS keys ON keys.public_key = a.public_key
                LEFT JOIN running AS r ON r.public_key = a.public_key
                LEFT JOIN picserve_key_shares AS s ON s.public_key = a.public_key
                CROSS JOIN LATERAL (
                    SELECT t.job_id, t.created_at FROM picserve_tasks AS t
                        WHERE t.status = 'Queuing' AND t.public_key = a.public_key
                        ORDER BY t.job_id LIMIT 1
                ) AS oldest
                WHERE a.public_key IS NOT NULL
        )
        SELECT array_agg(public_key ORDER BY last_served_at NULLS FIRST, oldest_job) AS keys,
               coalesce(array_agg(public_key ORDER BY last_served_at NULLS FIRST, oldest_job)
                            FILTER (WHERE starving), '{}') AS starving
            FROM keyed
            GROUP BY priority, share
            ORDER BY priority DESC, share ASC
    LOOP
        -- 1. a key kept waiting `patience` (by affinity) since it was last served: its jobs first
        FOREACH k IN ARRAY tier.starving LOOP
            FOREACH m IN ARRAY held LOOP
                picked := picserve_pick_job_v1(k, m, held_loras, reserved, patience, target_queue_names);
                EXIT tiers WHEN picked IS NOT NULL;
            END LOOP;
            picked := picserve_pick_job_v1(k, NULL, held_loras, reserved, patience, target_queue_names);
            EXIT tiers WHEN picked IS NOT NULL;
        END LOOP;
        -- 2. a job for a model this worker holds, least recently served key first
        FOREACH k IN ARRAY tier.keys LOOP
            FOREACH m IN ARRAY held LOOP
                picked := picserve_pick_job_v1(k, m, held_loras, reserved, patience, target_queue_names);
                EXIT tiers WHEN picked IS NOT NULL;
            END LOOP;
        END LOOP;
        -- 3. any job it may take, least recently served key first
        FOREACH k IN ARRAY tier.keys LOOP
            picked := picserve_pick_job_v1(k, NULL, held_loras, reserved, patience, target_queue_names);
            EXIT tiers WHEN picked IS NOT NULL;
        END LOOP;
    END LOOP;

    IF picked IS NULL THEN
        RETURN NEXT;  -- all NULL, as procrastinate's fetch when there is no job
        RETURN;
    END IF;

    UPDATE procrastinate_jobs AS j
        SET status = 'doing', worker_id = p_worker_id
        WHERE j.id = picked
        RETURNING j.id, j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock, j.args, j.status::text,
                  j.scheduled_at, j.attempts, j.abort_requested, j.worker_id
        INTO id, queue_name, task_name, priority, lock, queueing_lock, args, status, scheduled_at, attempts,
             abort_requested, worker_id;

    -- The worker now holds (or is loading) the task's model, and the key was served now.
    UPDATE picserve_workers AS w
        SET current_task = t.task_uid,
            current_model = t.model_code,
            main_models = CASE
                WHEN t.model_code IS NULL OR t.model_code = ANY(w.main_models) THEN w.main_models
                ELSE (ARRAY[t.model_code] || w.main_models)[1:greatest(w.model_slots, 1)]
            END,
            loras = ARRAY(SELECT DISTINCT l FROM unnest(w.loras || t.loras) AS l ORDER BY 1)
        FROM picserve_tasks AS t
        WHERE t.job_id = picked AND w.name = p_worker;
    INSERT INTO picserve_key_shares AS s (public_key, last_served_at)
        SELECT t.public_key, clock_timestamp() FROM picserve_tasks AS t
            JOIN picserve_keys AS keys ON keys.public_key = t.public_key
            WHERE t.job_id = picked
        ON CONFLICT (public_key) DO UPDATE SET last_served_at = EXCLUDED.last_served_at;

    RETURN NEXT;
END;
$$;

-- Webhooks (picserve/webhooks/): a key's default URL, each task's effective webhook, and one row per
-- event to post. An event's row and its procrastinate job (queue "webhooks") are written in the
-- transaction that makes the event: `completed` by a trigger on the task's terminal transition,
-- whatever statement makes it (a worker's finish or failure, a cancel, the stalled-job sweep, …), so
-- it can be neither lost nor made twice.
ALTER TABLE picserve_keys ADD COLUMN webhook_url text;

ALTER TABLE picserve_tasks ADD COLUMN webhook_url text;
ALTER TABLE picserve_tasks ADD COLUMN webhook_events text[] NOT NULL DEFAULT '{}';

CREATE TABLE picserve_webhook_deliveries (
    -- X-Picserve-Delivery: the same on every retry of this delivery
    delivery_id  text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    task_uid     text NOT NULL REFERENCES picserve_tasks (task_uid) ON DELETE CASCADE,
    event        text NOT NULL CHECK (event IN ('start', 'progress', 'completed')),
    url          text NOT NULL,
    -- the task's status and progress when the event happened: what the body reports
    task_status  text NOT NULL,
    progress     real NOT NULL DEFAULT 0,
    -- pending → delivered, or failed once its attempts ran out
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX picserve_webhook_deliveries_task ON picserve_webhook_deliveries (task_uid);
-- a task ends once: one `completed` delivery per task, whatever happens
CREATE UNIQUE INDEX picserve_webhook_deliveries_completed ON picserve_webhook_deliveries (task_uid)
    WHERE event = 'completed';

-- A delivery of `p_event` for the task, with its job, when the task's webhook wants that event; its
-- id, or NULL (no webhook, an event it does not want, a second `completed`).
CREATE FUNCTION picserve_enqueue_webhook(
    p_task_uid text, p_event text, p_url text, p_events text[], p_status text, p_progress real
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    made text;
BEGIN
    IF p_url IS NULL OR NOT (p_event = ANY (p_events)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO picserve_webhook_deliveries (task_uid, event, url, task_status, progress)
        VALUES (p_task_uid, p_event, p_url, p_status, p_progress)
        ON CONFLICT DO NOTHING
        RETURNING delivery_id INTO made;
    IF made IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
        'webhooks', 'picserve.deliver_webhook', 0, NULL, NULL,
        jsonb_build_object('delivery_id', made), NULL
    )::procrastinate_job_to_defer_v1]);
    RETURN made;
END;
$$;

-- `start` when a task is taken (Running), `completed` when it ends (Finished, Error, Canceled): in the
-- transaction of the UPDATE that made the change. A terminal status is final (every transition is
-- guarded by the status it expects), so `completed` happens once per task.
CREATE FUNCTION picserve_webhook_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('Finished', 'Error', 'Canceled') AND OLD.status NOT IN ('Finished', 'Error', 'Canceled') THEN
        PERFORM picserve_enqueue_webhook(
            NEW.task_uid, 'completed', NEW.webhook_url, NEW.webhook_events, NEW.status, NEW.progress);
    ELSIF NEW.status = 'Running' AND OLD.status <> 'Running' THEN
        PERFORM picserve_enqueue_webhook(
            NEW.task_uid, 'start', NEW.webhook_url, NEW.webhook_events, NEW.status, NEW.progress);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER picserve_webhook_on_status
    AFTER UPDATE OF status ON picserve_tasks
    FOR EACH ROW
    WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION picserve_webhook_on_status();

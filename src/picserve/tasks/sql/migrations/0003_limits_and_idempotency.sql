-- Per-key limits: NULL = the server's (PICSERVE_MAX_OPEN_TASKS, PICSERVE_MAX_REQUESTS_PER_MINUTE), 0 = none.
ALTER TABLE picserve_keys ADD COLUMN max_open_tasks integer;
ALTER TABLE picserve_keys ADD COLUMN max_requests_per_minute integer;

-- The request-rate limiter, shared by every API node: GCRA's one timestamp per key (the theoretical
-- arrival time of its next request). Its own table, so that counting a request never waits for the
-- key row that a submit holds locked.
CREATE TABLE picserve_rate_limits (
    public_key text PRIMARY KEY REFERENCES picserve_keys (public_key) ON DELETE CASCADE,
    tat        timestamptz NOT NULL
);

-- Idempotent submits: the task each (key, request_uuid) created, and a fingerprint of the signed
-- parameters it was made from. A row older than the idempotency window is ignored (and replaced by the
-- next use of its request_uuid); it is deleted with its task.
CREATE TABLE picserve_requests (
    public_key   text NOT NULL REFERENCES picserve_keys (public_key) ON DELETE CASCADE,
    request_uuid text NOT NULL,
    fingerprint  text NOT NULL,
    task_uid     text NOT NULL REFERENCES picserve_tasks (task_uid) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (public_key, request_uuid)
);
CREATE INDEX picserve_requests_created ON picserve_requests (created_at);
CREATE INDEX picserve_requests_task ON picserve_requests (task_uid);

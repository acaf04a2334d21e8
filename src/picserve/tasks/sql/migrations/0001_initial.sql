-- picserve's own tables, beside procrastinate's in the same database: the layout of the first
-- release. A database made by that release (before migrations were recorded) has these already and
-- gets this migration recorded without running it.
CREATE TABLE picserve_keys (
    public_key    text PRIMARY KEY,
    private_key   text NOT NULL,
    name          text NOT NULL DEFAULT '',
    total_credits bigint NOT NULL DEFAULT 0,
    used_credits  bigint NOT NULL DEFAULT 0,
    expire_at     timestamptz,
    revoked       boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE picserve_tasks (
    task_uid      text PRIMARY KEY,
    public_key    text NOT NULL REFERENCES picserve_keys (public_key),
    action        text NOT NULL,
    status        text NOT NULL,
    spec          jsonb NOT NULL,
    cost          bigint NOT NULL DEFAULT 0,
    progress      real NOT NULL DEFAULT 0,
    result_keys   text[] NOT NULL DEFAULT '{}',
    seeds         bigint[] NOT NULL DEFAULT '{}',
    error_code    integer NOT NULL DEFAULT 0,
    error_message text NOT NULL DEFAULT '',
    worker        text,
    job_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);

CREATE INDEX picserve_tasks_key_status ON picserve_tasks (public_key, status);
CREATE INDEX picserve_tasks_job ON picserve_tasks (job_id);

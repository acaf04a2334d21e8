-- Every run's end, with its cause (issue 22): finished, failed, cancelled, handed back by a stopping
-- worker, or lost (its worker died under it, its device failed, it hung past its deadline). A task
-- whose runs were lost more than PICSERVE_MAX_LOST_RUNS times ends Error with ErrorCode 505 instead of
-- being queued again: one poison request can no longer take every worker of a fleet down in turn.
-- Written in the transaction of the task's change that ended the run (tasks/postgres.py); deleted with
-- its task (retention). Tasks from before this migration have no history: their count starts at 0.
CREATE TABLE picserve_runs (
    task_uid   text        NOT NULL REFERENCES picserve_tasks (task_uid) ON DELETE CASCADE,
    -- the task's attempt number when this run took it (picserve_tasks.attempt)
    attempt    integer     NOT NULL,
    worker     text,
    started_at timestamptz,
    ended_at   timestamptz NOT NULL DEFAULT now(),
    ended_as   text        NOT NULL CHECK (ended_as IN (
        'finished', 'failed', 'canceled', 'requeued', 'lost', 'device_lost', 'timed_out')),
    -- the failure's message, or what the loss was (the device error, the deadline); '' when nothing
    detail     text        NOT NULL DEFAULT '',
    PRIMARY KEY (task_uid, attempt)
);

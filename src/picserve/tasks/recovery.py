"""Stalled-worker sweep: a job whose worker stopped sending heartbeats is queued again.

Recovery is driven by heartbeats, not a visibility timeout, so a long job on a live worker is never
run twice. Every API process and worker runs this loop; retrying a job is a guarded statement, so
two sweepers racing on the same job do no harm.

A database outage stops every worker's heartbeats too, though the workers live on (they wait for the
database, see database.py). So a sweeper that could not reach the database judges no worker until
`stalled_after` seconds after it is back: every live worker has beaten again by then, and only the
workers that really died meanwhile are found stalled.

A run lost this way counts against the task's attempt limit (`max_lost`, PICSERVE_MAX_LOST_RUNS):
a task whose workers keep dying under it (an out-of-memory kill, a segfault in a native library, a
driver reset) is not queued again after its limit, but ends Error with ErrorCode 505, logged with its
parameters' digest (postgres.requeue_job, `lost_run`).

The sweep also tidies what routing (routing.py) leaves behind: a worker silent for `workers.AGE_OUT`
× `stalled_after` is deleted from the registry (it stopped counting as live long before), and a queued
job whose task is no longer queued (its cancel reached the task but not the job, say) is cancelled:
picserve's fetch picks jobs through their queued tasks, so no worker would ever take it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from picserve import domain, errors, resilience
from picserve.config import Settings
from picserve.tasks import database, workers
from picserve.tasks.queue import TASK_NAME

__all__ = ["DEFAULT_MAX_LOST", "OnLoss", "lost_run", "sweep", "sweep_forever"]

log = logging.getLogger(__name__)

#: PICSERVE_MAX_LOST_RUNS's default: the third loss ends the task
DEFAULT_MAX_LOST = Settings.max_lost_runs

#: told of each lost run once it is written (the process counts it in its metrics)
OnLoss = Callable[[domain.RunEnd, domain.Requeue], None]


def lost_run(cause: domain.RunEnd, requeue: domain.Requeue, max_lost: int, detail: str = "") -> None:
    """Log a lost run: the task queued again (a warning), or given up (an error naming its digest)."""
    what = f"{cause.in_words}{f' ({detail})' if detail else ''}"
    if requeue.gave_up:
        log.error(
            "task %s stopped its workers: run lost %d times, more than PICSERVE_MAX_LOST_RUNS=%d (last: %s); "
            "ended Error %d, not run again, not charged; parameters digest %s",
            requeue.task_uid,
            requeue.lost_runs,
            max_lost,
            what,
            errors.StoppedItsWorkers.ret_code,
            requeue.digest,
        )
    else:
        log.warning(
            "task %s: run lost (%s); queued again (lost %d of at most %d; parameters digest %s)",
            requeue.task_uid,
            what,
            requeue.lost_runs,
            max_lost,
            requeue.digest,
        )


async def sweep(
    db: database.Database, stalled_after: float, max_lost: int = DEFAULT_MAX_LOST, on_loss: OnLoss | None = None
) -> list[str]:
    """Re-queue the jobs of dead workers; returns the TaskUIDs put back in the queue (a task past its
    `max_lost` lost runs ends Error instead: not listed). Also deletes the long-dead workers from the
    registry, and cancels the queued jobs no task waits for."""
    async with db.pool.connection() as conn:
        for name in await workers.prune(conn, workers.AGE_OUT * stalled_after):
            log.info("worker %s silent for %g s: removed from the registry", name, workers.AGE_OUT * stalled_after)
        cur = await conn.execute(_ORPHANS, {"task_name": TASK_NAME, "grace": stalled_after})
        orphans = [int(row[0]) for row in await cur.fetchall()]
    for job_id in orphans:
        if await db.app.job_manager.cancel_job_by_id_async(job_id):
            log.info("job %s: its task is no longer queued; cancelled", job_id)
    requeued = []
    # generation jobs only: a webhook delivery's job is retried as it is (webhooks/delivery.py)
    stalled = await db.app.job_manager.get_stalled_jobs(task_name=TASK_NAME, seconds_since_heartbeat=stalled_after)
    for job in stalled:
        # The stalled job ends and its task goes back to the queue under a new job, in one transaction
        # (postgres.requeue_job says why never the same job); a sweeper that lost the race does nothing.
        assert job.id is not None  # jobs read from the database always have an id
        silence = f"no heartbeat from its worker for {stalled_after:g} s"
        ended, requeue = await db.repo.requeue_job(job.id, max_lost, silence)
        if not ended:
            log.debug("job %s: ended by another sweeper", job.id)
        elif requeue is not None:
            if requeue.lost_runs:
                lost_run(domain.RunEnd.LOST, requeue, max_lost, silence)
                if on_loss is not None:
                    on_loss(domain.RunEnd.LOST, requeue)
            else:
                log.warning("worker of task %s stopped before starting it; task queued again", requeue.task_uid)
            if not requeue.gave_up:
                requeued.append(requeue.task_uid)
    return requeued


#: queued generation jobs whose task is gone, or ended (or running under another job) `grace` seconds ago
_ORPHANS = (
    "SELECT j.id FROM procrastinate_jobs j LEFT JOIN picserve_tasks t ON t.job_id = j.id "
    "WHERE j.status = 'todo' AND j.task_name = %(task_name)s AND (t.task_uid IS NULL OR (t.status <> 'Queuing' "
    "AND coalesce(t.finished_at, t.started_at, t.created_at) < now() - make_interval(secs => %(grace)s)))"
)


async def sweep_forever(db: database.Database, settings: Settings, on_loss: OnLoss | None = None) -> None:
    """`sweep` every third of PICSERVE_STALLED_AFTER, forever, with PICSERVE_MAX_LOST_RUNS; an error is
    logged and the next sweep comes all the same. After the database was unreachable, sweeping resumes
    `stalled_after` seconds after it is back."""
    stalled_after, every, max_lost = settings.stalled_after, settings.stalled_after / 3, settings.max_lost_runs
    down = False
    resume_at = 0.0
    while True:
        try:
            if down:
                await _probe(db)  # raises while the database is still unreachable
                down = False
                resume_at = time.monotonic() + stalled_after
                log.info("database reachable again: the stalled-worker sweep resumes in %g s", stalled_after)
            if time.monotonic() >= resume_at:
                await sweep(db, stalled_after, max_lost, on_loss)
        except Exception as exc:  # keep sweeping through database errors
            if not resilience.unreachable(exc):
                log.exception("stalled-job sweep failed")
            elif not down:
                down = True
                log.warning(
                    "stalled-job sweep: database unreachable (%s); trying again every %g s",
                    resilience.root_cause(exc),
                    every,
                )
        await asyncio.sleep(every)


async def _probe(db: database.Database) -> None:
    async with db.pool.connection() as conn:
        await conn.execute("SELECT 1")

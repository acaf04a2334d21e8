"""Stalled-worker sweep: a job whose worker stopped sending heartbeats is queued again.

Recovery is driven by heartbeats, not a visibility timeout, so a long job on a live worker is never
run twice. Every API process and worker runs this loop; retrying a job is a guarded statement, so
two sweepers racing on the same job do no harm.

A database outage stops every worker's heartbeats too, though the workers live on (they wait for the
database, see database.py). So a sweeper that could not reach the database judges no worker until
`stalled_after` seconds after it is back: every live worker has beaten again by then, and only the
workers that really died meanwhile are found stalled.

The sweep also tidies what routing (routing.py) leaves behind: a worker silent for `workers.AGE_OUT`
× `stalled_after` is deleted from the registry (it stopped counting as live long before), and a queued
job whose task is no longer queued (its cancel reached the task but not the job, say) is cancelled:
picserve's fetch picks jobs through their queued tasks, so no worker would ever take it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from picserve import resilience
from picserve.tasks import database, workers
from picserve.tasks.queue import TASK_NAME

__all__ = ["sweep", "sweep_forever"]

log = logging.getLogger(__name__)


async def sweep(db: database.Database, stalled_after: float) -> list[str]:
    """Re-queue the jobs of dead workers; returns the TaskUIDs put back in the queue. Also deletes the
    long-dead workers from the registry, and cancels the queued jobs no task waits for."""
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
        ended, task_uid = await db.repo.requeue_job(job.id)
        if not ended:
            log.debug("job %s: ended by another sweeper", job.id)
        elif task_uid:
            log.warning("worker of task %s stopped; task queued again", task_uid)
            requeued.append(task_uid)
    return requeued


#: queued generation jobs whose task is gone, or ended (or running under another job) `grace` seconds ago
_ORPHANS = (
    "SELECT j.id FROM procrastinate_jobs j LEFT JOIN picserve_tasks t ON t.job_id = j.id "
    "WHERE j.status = 'todo' AND j.task_name = %(task_name)s AND (t.task_uid IS NULL OR (t.status <> 'Queuing' "
    "AND coalesce(t.finished_at, t.started_at, t.created_at) < now() - make_interval(secs => %(grace)s)))"
)


async def sweep_forever(db: database.Database, stalled_after: float, every: float) -> None:
    """`sweep` every `every` seconds, forever; an error is logged and the next sweep comes all the same.
    After the database was unreachable, sweeping resumes `stalled_after` seconds after it is back."""
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
                await sweep(db, stalled_after)
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

"""Stalled-worker sweep: a job whose worker stopped sending heartbeats is queued again.

Recovery is driven by heartbeats, not a visibility timeout, so a long job on a live worker is never
run twice. Every API process and worker runs this loop; retrying a job is a guarded statement, so
two sweepers racing on the same job do no harm.
"""

from __future__ import annotations

import asyncio
import logging

from procrastinate import exceptions as procrastinate_exceptions

from picserve.tasks import database

__all__ = ["sweep", "sweep_forever"]

log = logging.getLogger(__name__)


async def sweep(db: database.Database, stalled_after: float) -> list[str]:
    """Re-queue the jobs of dead workers; returns the TaskUIDs put back in the queue."""
    requeued = []
    for job in await db.app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after):
        # The row first: a worker that takes the retried job must find its task queued.
        assert job.id is not None  # jobs read from the database always have an id
        task_uid = await db.repo.requeue_job(job.id)
        try:
            await db.app.job_manager.retry_job(job)
        except procrastinate_exceptions.ConnectorException as exc:  # another sweeper won the race
            log.debug("job %s not retried: %s", job.id, exc)
            continue
        if task_uid:
            log.warning("worker of task %s stopped; task queued again", task_uid)
            requeued.append(task_uid)
    return requeued


async def sweep_forever(db: database.Database, stalled_after: float, every: float) -> None:
    while True:
        try:
            await sweep(db, stalled_after)
        except Exception:  # keep sweeping through transient database errors
            log.exception("stalled-job sweep failed")
        await asyncio.sleep(every)

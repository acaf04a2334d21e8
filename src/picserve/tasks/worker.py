"""A worker process: one engine on one device, taking generation jobs from the queue."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from picserve import catalog as catalog_module
from picserve.config import Settings
from picserve.storage.disk import DiskStore
from picserve.tasks import database, jobs, recovery

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


async def run_worker(
    settings: Settings, database_url: str, name: str | None = None, burst: bool = False, engine=None
) -> None:
    """Take jobs until stopped (SIGTERM/SIGINT finish the running job first); `burst` stops when the queue is empty."""
    from picserve.engine.engine import Engine  # torch is imported by workers only

    name = name or f"{socket.gethostname()}:{os.getpid()}:{settings.device}"
    engine = engine or Engine(
        catalog_module.Catalog(settings.models_dir),
        device=settings.device,
        max_loaded=settings.max_loaded_models,
        cache_dir=settings.data_dir / "cache",
    )
    async with database.open_database(database_url, max_size=4) as db:
        runtime = jobs.WorkerRuntime(
            repo=db.repo,
            engine=engine,
            name=name,
            store=DiskStore(settings.results_dir, settings.result_ttl_seconds),
            progress_interval=settings.progress_interval,
        )
        sweeper = asyncio.create_task(recovery.sweep_forever(db, settings.stalled_after, settings.stalled_after / 3))
        log.info("worker %s ready", name)
        try:
            await db.app.run_worker_async(
                queues=[jobs.QUEUE],
                name=name,
                concurrency=1,
                additional_context={"picserve": runtime},
                update_heartbeat_interval=settings.heartbeat_interval,
                stalled_worker_timeout=settings.stalled_after,
                delete_jobs="successful",
                install_signal_handlers=not burst,
                wait=not burst,
                abort_job_polling_interval=1.0,
            )
        finally:
            sweeper.cancel()

"""A worker process: one engine on one device, taking generation jobs from the queue."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import procrastinate

from picserve.catalog import Catalog
from picserve.config import Settings
from picserve.engine.base import GenerationEngine
from picserve.storage.disk import DiskStore
from picserve.tasks import database, jobs, recovery

__all__ = ["build_engine", "run_worker", "work"]

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> GenerationEngine:
    """The diffusers engine for `settings.device`, with the memory knobs of `settings`."""
    from picserve.engine.engine import Engine  # torch is imported by workers only

    return Engine(
        Catalog(settings.models_dir, ttl=settings.catalog_rescan_seconds),
        device=settings.device,
        max_loaded=settings.max_loaded_models,
        cache_dir=settings.data_dir / "cache",
        max_chunk=settings.batch_chunk,
        max_loras=settings.max_loras_per_model,
        max_cached_files=settings.max_cached_files,
    )


async def run_worker(
    settings: Settings,
    database_url: str,
    name: str | None = None,
    burst: bool = False,
    engine: GenerationEngine | None = None,
) -> None:
    """Take jobs from the database until stopped (SIGTERM/SIGINT finish the running job first).

    `burst` stops once the queue is empty; `engine` replaces the diffusers engine (e.g. a FakeEngine).
    """
    name = name or f"{socket.gethostname()}:{os.getpid()}:{settings.device}"
    engine = engine or build_engine(settings)
    async with database.open_database(
        database_url, max_size=settings.worker_db_connections, idle_transaction_timeout=2 * settings.stalled_after
    ) as db:
        runtime = jobs.WorkerRuntime(
            repo=db.repo,
            engine=engine,
            store=DiskStore(settings.results_dir, settings.result_ttl_seconds),
            name=name,
            progress_interval=settings.progress_interval,
        )
        sweeper = asyncio.create_task(recovery.sweep_forever(db, settings.stalled_after, settings.stalled_after / 3))
        try:
            await work(db.app, runtime, settings, burst=burst)
        finally:
            sweeper.cancel()
            runtime.engine_thread.close()


async def work(app: procrastinate.App, runtime: jobs.WorkerRuntime, settings: Settings, burst: bool = False) -> None:
    """Run generation jobs of `app` (any connector) with `runtime`, one at a time.

    On SIGTERM/SIGINT (or cancellation) the running task gets `settings.shutdown_grace` seconds to
    finish; then its job is aborted and the task queued again (never marked Canceled).
    """
    log.info("worker %s ready", runtime.name)
    await app.run_worker_async(
        queues=[jobs.QUEUE],
        name=runtime.name,
        concurrency=1,
        additional_context={"picserve": runtime},
        update_heartbeat_interval=settings.heartbeat_interval,
        stalled_worker_timeout=settings.stalled_after,
        delete_jobs="successful",
        install_signal_handlers=not burst,
        wait=not burst,
        abort_job_polling_interval=1.0,
        shutdown_graceful_timeout=settings.shutdown_grace,
    )

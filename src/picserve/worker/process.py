"""A worker process: one engine on one device, taking the queue's jobs (a task of any kind each).

A database outage does not stop a worker (database.py's docstring has the whole design): its App runs
on `connector.ResilientConnector` and its run writes go through `resilience.Retry`, so it waits for the
database with its running task going on, and carries on when it is back. Should procrastinate's loop
end on an error all the same, `work` starts it again in this process; `picserve serve` restarting
the whole worker process is only the last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import procrastinate
from procrastinate.worker import Worker

from picserve import admission, metrics, model_import, resilience
from picserve.catalog import Catalog
from picserve.config import Settings
from picserve.engine.base import GenerationEngine
from picserve.errors import PicserveError
from picserve.storage.factory import open_store
from picserve.tasks import database, recovery
from picserve.worker import connector, deadline, jobs, registry, routing

__all__ = ["build_engine", "preload_codes", "run_worker", "work"]

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds a stopping worker keeps retrying its database writes beyond the shutdown grace
_STOP_MARGIN = 5.0


class _Loop(Protocol):
    """What `work` uses of a procrastinate Worker (whose methods are not annotated)."""

    def run(self) -> Coroutine[Any, Any, None]: ...

    def stop(self) -> None: ...


def build_engine(settings: Settings) -> GenerationEngine:
    """The diffusers engine for `settings.device`, with the memory knobs of `settings` (a bad
    PICSERVE_MODEL_MEMORY or PICSERVE_MODEL_HOST_MEMORY is a ValueError naming it)."""
    import psutil
    import torch  # workers only: the API never imports torch

    from picserve.engine.acceleration import Acceleration
    from picserve.engine.engine import Engine, device_memory
    from picserve.engine.loader import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    try:
        dtype = resolve_dtype(settings.dtype, device)
        memory_budget, host_budget = admission.budgets(
            settings.model_memory,
            settings.model_host_memory,
            device.type,
            # a CPU worker's device is the RAM: both are what this process may use of it (a container's limit)
            admission.usable_memory(psutil.virtual_memory().total) if device.type == "cpu" else device_memory(device),
            admission.usable_memory(psutil.virtual_memory().total),
            torch.cuda.device_count() if device.type == "cuda" else 0,  # the visible GPUs (CUDA_VISIBLE_DEVICES)
        )
        controlnet_memory = _controlnet_budget(settings.controlnet_memory, dtype, device_memory(device) or None)
        speed = Acceleration.parse(
            channels_last=settings.channels_last,
            fuse_qkv=settings.fuse_qkv,
            compile=settings.compile,
            compile_sizes=settings.compile_sizes,
            lora_max_rank=settings.lora_max_rank,
            lora_slots=settings.lora_slots,
        )
    except ValueError as exc:  # a setting the operator mistyped: said plainly, no traceback
        raise SystemExit(f"picserve worker: {exc}") from None
    return Engine(
        Catalog.of(settings),
        device=settings.device,
        max_loaded=settings.max_loaded_models,
        cache_dir=settings.data_dir / "cache",
        max_chunk=settings.batch_chunk,
        max_loras=settings.max_loras_per_model,
        max_cached_files=settings.max_cached_files,
        memory_budget=memory_budget,
        host_budget=host_budget,
        speed=speed,
        dtype=dtype,
        upscale_tile=settings.upscale_tile,
        controlnet_memory=controlnet_memory,
        translation_models=settings.translation_dir,
    )


#: a full SDXL ControlNet's parameters (1.25 billion): "auto" keeps two of them
_FULL_CONTROLNET_PARAMETERS = 1_251_000_000


def _controlnet_budget(text: str, dtype: Any, device_total: int | None) -> int | None:
    """PICSERVE_CONTROLNET_MEMORY in bytes (None: unbounded); ValueError naming it when mistyped."""
    if text.strip().lower() == "none":
        return None
    if text.strip().lower() == "auto":
        return 2 * _FULL_CONTROLNET_PARAMETERS * dtype.itemsize
    try:
        return admission.parse_amount(text, device_total)
    except ValueError as exc:
        raise ValueError(f"PICSERVE_CONTROLNET_MEMORY: {exc}") from None


def preload_codes(settings: Settings) -> list[str]:
    """The main models of PICSERVE_PRELOAD (`worker --preload`), in order, each once."""
    return list(dict.fromkeys(code.strip() for code in (settings.preload or "").split(",") if code.strip()))


async def run_worker(
    settings: Settings,
    database_url: str,
    name: str | None = None,
    burst: bool = False,
    engine: GenerationEngine | None = None,
) -> None:
    """Take jobs from the database until stopped (SIGTERM/SIGINT finish the running job first).

    `burst` stops once the queue is empty; `engine` replaces the diffusers engine (e.g. a FakeEngine).
    The worker's jobs run on an App of their own whose connector waits out database outages and
    fetches with picserve's routing (routing.py; a burst worker, which must drain the queue, without
    model affinity); the stalled-worker sweep uses the plain one, so that it sees an outage instead of
    waiting it out. The worker keeps its row in the registry (registry.py) from start to clean exit.

    Raises `jobs.DeviceFailure` once a job found the device broken (a sticky CUDA error; its task is
    queued again) or its engine call hung past the run's deadline and would not stop: the worker's row
    then stays in the registry, marked unhealthy.
    """
    name = name or f"{socket.gethostname()}:{os.getpid()}:{settings.device}"
    try:
        deadlines = deadline.DeadlinePolicy.of(settings)
    except ValueError as exc:  # a setting the operator mistyped: said plainly, no traceback
        raise SystemExit(f"picserve worker: {exc}") from None
    engine = engine or build_engine(settings)
    retry = resilience.Retry()
    affinity_wait = 0.0 if burst else settings.affinity_wait
    settings = settings.evolve(affinity_wait=affinity_wait)
    async with database.open_database(
        database_url,
        max_size=settings.worker_db_connections,
        idle_transaction_timeout=2 * settings.stalled_after,
        wait_timeout=settings.db_wait_timeout,
    ) as db:
        route = routing.Routing(worker=name, affinity_wait=affinity_wait, live_after=settings.stalled_after)
        app = database.make_app(database_url, connector.ResilientConnector(retry, route))
        await app.open_async(db.pool)
        device, gpu, gpu_memory = registry.describe_device(settings.device)
        roster = registry.WorkerRegistry(db.pool, name, device, gpu=gpu, gpu_memory=gpu_memory)
        runtime = jobs.WorkerRuntime(
            repo=db.repo,
            engine=engine,
            store=open_store(settings),
            name=name,
            progress_interval=settings.progress_interval,
            preview_interval=settings.preview_interval if settings.previews else None,
            webhook_progress_interval=settings.webhook_progress_interval,
            retry=retry,
            registry=roster,
            device=device,
            deadlines=deadlines,
            max_lost_runs=settings.max_lost_runs,
            actions=model_import.actions(settings),
        )
        if codes := preload_codes(settings):
            # before the first fetch: the registry then tells the fleet's routing what this worker holds
            started = asyncio.get_running_loop().time()
            try:
                await runtime.engine_thread.call(lambda: engine.preload(codes))
            except PicserveError as exc:  # a model that cannot load is reported; the worker still serves
                log.error("worker %s could not preload %s: %s", name, ", ".join(codes), exc.message)
            else:
                took = asyncio.get_running_loop().time() - started
                log.info("worker %s preloaded %s in %.1f s", name, ", ".join(codes), took)
        await roster.register(
            await runtime.engine_thread.call(engine.holdings), await runtime.engine_thread.call(engine.capacity)
        )
        sweep = recovery.sweep_forever(db, settings, metrics.lost_runs_counter(metrics.WORKER_REGISTRY))
        sweeper = asyncio.create_task(sweep)
        beater = asyncio.create_task(_beat_forever(roster, settings.heartbeat_interval))
        stop_metrics = metrics.serve_worker(settings.worker_metrics_port, settings.host, device)
        try:
            await work(app, runtime, settings, burst=burst)
        finally:
            stop_metrics()
            sweeper.cancel()
            beater.cancel()
            runtime.engine_thread.close(wait=not runtime.engine_hung)  # a stuck thread is left behind
            await app.close_async()
            if runtime.device_failure is None:  # an unhealthy worker's row stays, saying why
                await asyncio.shield(roster.unregister())


async def _beat_forever(roster: registry.WorkerRegistry, every: float) -> None:
    """The registry heartbeat (best effort: a failed one is logged by the registry)."""
    while True:
        await asyncio.sleep(every)
        await roster.heartbeat()


async def work(app: procrastinate.App, runtime: jobs.WorkerRuntime, settings: Settings, burst: bool = False) -> None:
    """Run generation jobs of `app` (any connector) with `runtime`, one at a time.

    On SIGTERM/SIGINT (or cancellation) the running task gets `settings.shutdown_grace` seconds to
    finish; then its job is aborted and the task queued again (never marked Canceled). A second signal
    has its default effect. Database writes still failing `_STOP_MARGIN` seconds after the grace are
    given up (the stalled-worker sweep queues the task again once this worker's heartbeats stop).

    If procrastinate's loop ends on an error (not a stop), it is started again after a backoff (1 s,
    doubling to 30 s; a loop that ran a minute starts over at 1 s), in this process, as a newly
    registered procrastinate worker. In `burst` mode (the queue drained once, no signal handling) an
    error is raised instead.

    A job that finds the device broken (jobs.py, engine/faults.py) stops the loop as a signal would;
    then `jobs.DeviceFailure` is raised.
    """
    jobs.register(app)
    log.info("worker %s ready", runtime.name)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    current: list[_Loop] = []

    def stop() -> None:
        if not stopped.is_set():
            log.info("worker %s stopping", runtime.name)
        stopped.set()
        runtime.retry.stop(settings.shutdown_grace + _STOP_MARGIN)
        for each in current:
            each.stop()
        _uninstall_signal_handlers(loop)  # a second signal: the default (procrastinate's behaviour too)

    handlers = not burst and _install_signal_handlers(loop, stop)
    runtime.stop_worker = stop  # called by the job that finds the device broken

    async def run_once() -> None:
        if runtime.device_failure is not None:
            raise runtime.device_failure
        worker: _Loop = Worker(
            app=app,
            queues=[jobs.QUEUE],
            name=runtime.name,
            concurrency=1,
            additional_context={"picserve": runtime},
            update_heartbeat_interval=settings.heartbeat_interval,
            stalled_worker_timeout=settings.stalled_after,
            delete_jobs="successful",
            install_signal_handlers=False,
            wait=not burst,
            # a job held back for its model's holder is free for anyone after the wait, unannounced
            fetch_job_polling_interval=routing.poll_interval(settings.affinity_wait),
            abort_job_polling_interval=1.0,
            shutdown_graceful_timeout=settings.shutdown_grace,
        )
        current[:] = [worker]
        running = asyncio.create_task(worker.run(), name=f"procrastinate worker {runtime.name}")
        try:
            # shielded: a cancellation first sets the retry deadline (stop), then reaches the loop
            await asyncio.shield(running)
        except asyncio.CancelledError:
            stop()
            running.cancel()  # procrastinate's own graceful shutdown: the running job gets its grace
            await asyncio.wait([running])
            raise
        except Exception as exc:
            if runtime.device_failure is not None:
                raise runtime.device_failure from exc
            if stopped.is_set() and resilience.unreachable(exc):
                log.warning(
                    "worker %s stopped with the database unreachable (%s)", runtime.name, resilience.root_cause(exc)
                )
                return
            raise
        if runtime.device_failure is not None:
            raise runtime.device_failure

    def fatal(exc: Exception) -> bool:
        # the device broken, a drained queue's error, or an error while stopping: not worth a restart
        return isinstance(exc, jobs.DeviceFailure) or burst or stopped.is_set()

    try:
        await resilience.run_restarting(
            f"worker {runtime.name}: procrastinate's loop", run_once, fatal=fatal, stopped=stopped
        )
        if runtime.device_failure is not None:
            raise runtime.device_failure
    finally:
        current.clear()
        if handlers:
            _uninstall_signal_handlers(loop)


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> bool:
    """SIGINT and SIGTERM call `handler` on `loop`; False where signals cannot be handled (not the main
    thread, as when a test runs the worker in the API's event loop)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _uninstall_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)

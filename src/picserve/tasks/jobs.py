"""The worker's whole script: one queued job = one task, ending in exactly one terminal write."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import procrastinate

from picserve import errors

__all__ = ["QUEUE", "TASK_NAME", "WorkerRuntime", "run_generation"]

log = logging.getLogger(__name__)

QUEUE = "generation"
TASK_NAME = "picserve.run_generation"


@dataclass
class WorkerRuntime:
    """What a worker's jobs need, handed to them through procrastinate's additional_context."""

    repo: Any  # tasks.repo.TaskRepo
    engine: Any  # engine.engine.Engine (or any object with .generate(spec, on_step))
    store: Any  # storage Store
    name: str
    progress_interval: float = 0.5


async def run_generation(context: procrastinate.JobContext, task_uid: str) -> None:
    runtime: WorkerRuntime = context.additional_context["picserve"]
    spec = await runtime.repo.mark_running(task_uid, runtime.name)
    if spec is None:
        log.info("task %s is no longer queued; skipping", task_uid)
        return

    loop = asyncio.get_running_loop()
    last_write = [0.0]

    def on_step(progress: float) -> None:  # runs in the engine's thread
        if context.should_abort():
            raise errors.TaskCanceled()
        now = time.monotonic()
        if now - last_write[0] >= runtime.progress_interval:
            last_write[0] = now
            asyncio.run_coroutine_threadsafe(runtime.repo.record_progress(task_uid, progress), loop)

    outcome: tuple[str, Any] = ("error", (500, "worker stopped before the task ended"))
    try:
        generated = await asyncio.to_thread(runtime.engine.generate, spec, on_step)
        keys = [await asyncio.to_thread(runtime.store.put, png) for png in await asyncio.to_thread(generated.pngs)]
        outcome = ("finished", (keys, generated.seeds))
    except errors.TaskCanceled:
        outcome = ("canceled", None)
    except asyncio.CancelledError:
        # procrastinate aborts an async job by cancelling it; the engine thread stops at its next step
        # through should_abort(). Any other cancellation is a worker shutdown: reported as an error.
        if context.should_abort():
            outcome = ("canceled", None)
        raise
    except errors.PicserveError as exc:
        outcome = ("error", (exc.ret_code, exc.message))
    except Exception as exc:  # a bug or a runtime failure (e.g. out of memory): reported, never lost
        log.exception("task %s failed", task_uid)
        outcome = ("error", (500, f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        await asyncio.shield(_write_outcome(runtime.repo, task_uid, outcome))
        # What this worker now holds in memory: the hint a future queue policy routes jobs by.
        log.info("task %s %s; worker holds %s", task_uid, outcome[0], runtime.engine.holdings())


async def _write_outcome(repo, task_uid: str, outcome: tuple[str, Any]) -> None:
    kind, value = outcome
    if kind == "finished":
        await repo.finish_task(task_uid, *value)
    elif kind == "canceled":
        await repo.cancel_task(task_uid)
    else:
        await repo.fail_task(task_uid, *value)

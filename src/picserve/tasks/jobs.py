"""The worker's whole script: one queued job = one task, ending in exactly one terminal write."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

import procrastinate

from picserve import errors
from picserve.engine.base import GenerationEngine
from picserve.storage.base import Store
from picserve.tasks.repository import TaskRepository

__all__ = ["INTERNAL_ERROR", "QUEUE", "TASK_NAME", "WorkerRuntime", "register", "run_generation"]

log = logging.getLogger(__name__)

QUEUE = "generation"
TASK_NAME = "picserve.run_generation"

#: what a client reads when a task fails for a reason of ours; the traceback goes to the worker's log
INTERNAL_ERROR = "internal error while generating; the server log has the details (task {task_uid})"


@dataclass
class WorkerRuntime:
    """What a worker's jobs need, handed to them through procrastinate's additional_context."""

    repo: TaskRepository
    engine: GenerationEngine
    store: Store
    #: the worker's name, written on the tasks it runs
    name: str
    #: minimum seconds between two progress writes of one task
    progress_interval: float = 0.5


def register(app: procrastinate.App) -> procrastinate.App:
    """Register the generation job on `app` (any connector); returns `app`."""
    app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)(run_generation)
    return app


@dataclass(frozen=True)
class _Finished:
    keys: list[str]
    seeds: list[int]


@dataclass(frozen=True)
class _Failed:
    code: int
    message: str


_Outcome = _Finished | _Failed | Literal["canceled"]


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

    outcome: _Outcome = _Failed(500, "the worker stopped before the task ended")
    try:
        generated = await asyncio.to_thread(runtime.engine.generate, spec, on_step)
        pngs = await asyncio.to_thread(generated.pngs)
        keys = [await asyncio.to_thread(runtime.store.put, data) for data in pngs]
        outcome = _Finished(keys, generated.seeds)
    except errors.TaskCanceled:
        outcome = "canceled"
    except asyncio.CancelledError:
        # procrastinate aborts an async job by cancelling it; the engine thread stops at its next step
        # through should_abort(). Any other cancellation is a worker shutdown: reported as an error.
        if context.should_abort():
            outcome = "canceled"
        raise
    except errors.PicserveError as exc:
        outcome = _Failed(exc.ret_code, exc.message)
    except Exception:  # a bug or an unexpected runtime failure: logged in full, reported without internals
        log.exception("task %s failed", task_uid)
        outcome = _Failed(500, INTERNAL_ERROR.format(task_uid=task_uid))
    finally:
        await asyncio.shield(_write_outcome(runtime.repo, task_uid, outcome))
        # What this worker now holds in memory: the hint a future queue policy routes jobs by.
        log.info("task %s %s; worker holds %s", task_uid, _name(outcome), runtime.engine.holdings())


def _name(outcome: _Outcome) -> str:
    return outcome if isinstance(outcome, str) else "finished" if isinstance(outcome, _Finished) else "failed"


async def _write_outcome(repo: TaskRepository, task_uid: str, outcome: _Outcome) -> None:
    if isinstance(outcome, _Finished):
        await repo.finish_task(task_uid, outcome.keys, outcome.seeds)
    elif isinstance(outcome, _Failed):
        await repo.fail_task(task_uid, outcome.code, outcome.message)
    else:
        await repo.cancel_task(task_uid)

"""The worker's whole script: one queued job = one run of one task, ending in exactly one outcome.

The run is a protocol (cog's worker and `Done`, InvokeAI's one thread per device are the models):

1. `mark_running` starts a fenced `Run` (task, worker, attempt); a task no longer queued is skipped.
2. Everything torch does (generating, PNG encoding, reading what is loaded) runs on the worker's one
   `EngineThread`; progress is written from its step callback, which also raises `TaskCanceled` once
   the job is asked to abort.
3. The job owns the engine until the engine thread has returned, on every exit path: an abort
   (procrastinate cancels the job's asyncio task) waits, shielded, for the thread to stop at its next
   step before the next job may start.
4. The run ends in one typed outcome — `Finished`, `Failed`, `Canceled` (a client's cancel) or
   `Requeued` (the worker is shutting down) — applied by `_apply` alone. Every write names the run: a
   superseded run's write is refused, and the files it stored are deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import TypeVar

import procrastinate
from procrastinate.job_context import AbortReason

from picserve import domain, errors
from picserve.engine.base import GenerationEngine, StepCallback
from picserve.storage.base import Store
from picserve.tasks import references
from picserve.tasks.engine_thread import EngineThread
from picserve.tasks.repository import TaskRepository

__all__ = [
    "INTERNAL_ERROR",
    "QUEUE",
    "TASK_NAME",
    "Canceled",
    "Failed",
    "Finished",
    "Outcome",
    "Requeued",
    "WorkerRuntime",
    "register",
    "run_generation",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    #: the one thread every engine call runs on (see engine_thread.py for why)
    engine_thread: EngineThread = field(default_factory=EngineThread)


def register(app: procrastinate.App) -> procrastinate.App:
    """Register the generation job on `app` (any connector); returns `app`."""
    app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)(run_generation)
    return app


@dataclass(frozen=True)
class Finished:
    keys: list[str]
    seeds: list[int]


@dataclass(frozen=True)
class Failed:
    code: int
    message: str


@dataclass(frozen=True)
class Canceled:
    """A client cancelled the task."""


@dataclass(frozen=True)
class Requeued:
    """The worker is shutting down: the task goes back to the queue, to run again."""


Outcome = Finished | Failed | Canceled | Requeued


async def run_generation(context: procrastinate.JobContext, task_uid: str) -> None:
    runtime: WorkerRuntime = context.additional_context["picserve"]
    started = await runtime.repo.mark_running(task_uid, runtime.name)
    if started is None:
        log.info("task %s is no longer queued; skipping", task_uid)
        return
    run, spec = started
    outcome: Outcome = Failed(500, INTERNAL_ERROR.format(task_uid=task_uid))
    try:
        outcome = await _execute(context, runtime, run, spec)
    except asyncio.CancelledError:
        outcome = _aborted(context)  # the engine thread has returned: _execute waited for it
        raise
    finally:
        await asyncio.shield(_apply(runtime, run, spec, outcome))


async def _execute(
    context: procrastinate.JobContext, runtime: WorkerRuntime, run: domain.Run, spec: domain.GenerationSpec
) -> Outcome:
    """Generate and store; the outcome, or CancelledError (after the engine thread has returned)."""
    on_step = _step_callback(context, runtime, run)

    def generate() -> tuple[list[bytes], list[int]]:  # on the engine thread
        generated = runtime.engine.generate(spec, on_step)
        if context.should_abort():  # asked to stop during the VAE decode: no files for this run
            raise errors.TaskCanceled()
        return generated.pngs(), generated.seeds

    try:
        spec = await asyncio.to_thread(references.restore, spec, runtime.store)
        pngs, seeds = await _own_until_done(runtime.engine_thread.submit(generate))
    except errors.TaskCanceled:
        return _aborted(context)
    except errors.PicserveError as exc:
        return Failed(exc.ret_code, exc.message)
    except Exception:  # a bug or an unexpected runtime failure: logged in full, reported without internals
        log.exception("task %s failed", run.task_uid)
        return Failed(500, INTERNAL_ERROR.format(task_uid=run.task_uid))

    keys: list[str] = []
    try:
        for data in pngs:
            keys.append(await asyncio.to_thread(runtime.store.put, data))
    except BaseException as exc:  # a cancel or a storage failure mid-way: no partial results are left
        await asyncio.shield(_delete(runtime.store, keys))
        if isinstance(exc, errors.StorageError):
            return Failed(exc.ret_code, exc.message)
        raise
    return Finished(keys, seeds)


async def _own_until_done(
    future: concurrent.futures.Future[tuple[list[bytes], list[int]]],
) -> tuple[list[bytes], list[int]]:
    """The engine call's result. Cancelled meanwhile, it still waits for the engine thread to return
    (the step callback stops it at the next step), then raises CancelledError: the job owns the engine
    until then, so the next job never runs beside this one."""
    waiting = asyncio.wrap_future(future)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(waiting)
            break
        except asyncio.CancelledError:
            if waiting.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def _step_callback(context: procrastinate.JobContext, runtime: WorkerRuntime, run: domain.Run) -> StepCallback:
    """Called by the engine (on its thread) after each step and between phases: stops the engine once
    the job is asked to abort, and writes progress at most every `progress_interval` seconds."""
    loop = asyncio.get_running_loop()
    last_write = [float("-inf")]

    def on_step(progress: float) -> None:
        if context.should_abort():
            raise errors.TaskCanceled()
        now = time.monotonic()
        if now - last_write[0] >= runtime.progress_interval:
            last_write[0] = now
            asyncio.run_coroutine_threadsafe(runtime.repo.record_progress(run, progress), loop)

    return on_step


def _aborted(context: procrastinate.JobContext) -> Outcome:
    """A job aborted by a shutdown hands its task back; any other abort is a client's cancel."""
    return Requeued() if context.abort_reason() == AbortReason.SHUTDOWN else Canceled()


async def _apply(runtime: WorkerRuntime, run: domain.Run, spec: domain.GenerationSpec, outcome: Outcome) -> None:
    """The one place a run's outcome is written. A superseded run's write is refused (its task was
    queued again and another worker runs it now): its files are deleted and the refusal logged. A task
    that ended has its reference images deleted; a requeued one keeps them for its next run."""
    repo = runtime.repo
    if isinstance(outcome, Finished):
        written = await repo.finish_task(run, outcome.keys, outcome.seeds)
        if not written:
            await _delete(runtime.store, outcome.keys)
    elif isinstance(outcome, Failed):
        written = await repo.fail_task(run, outcome.code, outcome.message)
    elif isinstance(outcome, Canceled):
        written = await repo.cancel_run(run)
    else:
        written = await repo.requeue_run(run)
    name = type(outcome).__name__.lower()
    if written and not isinstance(outcome, Requeued):
        await asyncio.to_thread(references.drop, spec, runtime.store)
    if written:
        # What this worker now holds: the hint a queue policy routes jobs by (read on the engine thread).
        holdings = await runtime.engine_thread.call(runtime.engine.holdings)
        log.info("task %s %s (attempt %d); worker holds %s", run.task_uid, name, run.attempt, holdings)
    else:
        log.warning(
            "task %s: attempt %d by %s was superseded; its outcome (%s) was not written",
            run.task_uid,
            run.attempt,
            run.worker,
            name,
        )


async def _delete(store: Store, keys: list[str]) -> None:
    for key in keys:
        await asyncio.to_thread(store.delete, key)

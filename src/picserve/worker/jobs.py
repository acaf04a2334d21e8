"""The worker's whole script: one queued job = one run of one task, ending in exactly one outcome.

The run is a protocol (cog's worker and `Done`, InvokeAI's one thread per device are the models):

1. `mark_running` starts a fenced `Run` (task, worker, attempt); a task no longer queued is skipped.
2. Everything torch does (generating, PNG encoding, reading what is loaded) runs on the worker's one
   `EngineThread`; progress is written from its step callback, which also raises `TaskCanceled` once
   the job is asked to abort.
3. The job owns the engine until the engine thread has returned, on every exit path: an abort
   (procrastinate cancels the job's asyncio task) waits, shielded, for the thread to stop at its next
   step before the next job may start.
4. The run ends in one typed outcome — `Finished`, `Failed`, `Canceled` (a client's cancel),
   `Requeued` (the worker is shutting down) or `DeviceLost` (a sticky device error: requeued too) —
   applied by `_apply` alone. Every write names the run: a
   superseded run's write is refused, and the files it stored are deleted.
5. A database outage does not end a run. Taking the task and writing its outcome are retried by the
   worker's `Retry` until the database answers again (a running generation just goes on meanwhile);
   progress writes are best effort and dropped while it is away. A statement whose connection broke
   after it was sent may have been applied: a write refused on its retry is then not taken for a
   superseded run's (its files are kept, the log says so).
6. A sticky device error (engine/faults.py: an illegal memory access, a device-side assert, an ECC
   fault) is the worker's, not the task's: every later engine call would fail too. The task goes back
   to the queue, uncharged and not failed, the worker marks itself unhealthy in the registry, counts
   it (picserve_worker_device_failures_total) and stops taking jobs; `process.work` then raises
   `DeviceFailure` and `picserve worker` exits with code 75 (`DeviceFailure.exit_code`), for
   `picserve serve` or an orchestrator to start it again.
7. A run that gives no sign of life within its deadline (deadline.py) is abandoned: `TimedOut`, its
   task queued again. If the engine call does not stop once told to, the engine thread is stuck: the
   worker stops as for a broken device (unhealthy, exit code 75), leaving the thread behind.
8. A run lost to its worker (a device failure, a hang; the stalled-worker sweep finds the dead ones)
   counts against the task's attempt limit (PICSERVE_MAX_LOST_RUNS): past it, the task ends Error 505
   instead of being queued again (tasks/repository.py).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import procrastinate
from PIL import Image
from procrastinate.job_context import AbortReason

from picserve import domain, errors, logs, metrics
from picserve.engine import faults, pipelines
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback
from picserve.resilience import Retry
from picserve.storage.base import Store
from picserve.tasks import recovery, references
from picserve.tasks.queue import QUEUE, TASK_NAME
from picserve.tasks.repository import TaskRepository
from picserve.worker.deadline import Deadline, DeadlinePolicy, RunHung, Speedometer
from picserve.worker.engine_thread import EngineThread
from picserve.worker.registry import WorkerRegistry

__all__ = [
    "INTERNAL_ERROR",
    "QUEUE",
    "TASK_NAME",
    "Canceled",
    "DeviceFailure",
    "DeviceLost",
    "Failed",
    "Finished",
    "Outcome",
    "Requeued",
    "TimedOut",
    "WorkerRuntime",
    "register",
    "run_generation",
]

log = logging.getLogger(__name__)


#: what a client reads when a task fails for a reason of ours; the traceback goes to the worker's log
INTERNAL_ERROR = "internal error while generating; the server log has the details (task {task_uid})"


class DeviceFailure(Exception):
    """The worker's device is unusable (a sticky device error): the worker stopped, to be started again."""

    #: `picserve worker`'s exit code then (EX_TEMPFAIL of sysexits.h: a temporary failure, start it again)
    exit_code = 75


def _nothing() -> None:
    pass


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
    #: minimum seconds between two previews of one task; None: no previews
    preview_interval: float | None = None
    #: minimum seconds between two `progress` webhook events of one task (with a progress write)
    webhook_progress_interval: float = 5.0
    #: the one thread every engine call runs on (see engine_thread.py for why)
    engine_thread: EngineThread = field(default_factory=EngineThread)
    #: how the run's database writes wait out an outage (the worker passes a PostgreSQL-aware one)
    retry: Retry = field(default_factory=Retry)
    #: the worker's row in the registry, told after every job what the engine holds (None: no registry,
    #: as on the in-memory queue)
    registry: WorkerRegistry | None = None
    #: the worker's device, as logs and metrics name it
    device: str = "unknown"
    #: task kinds the worker runs itself rather than through an engine pipeline, with what it was
    #: configured with (its models folder, its secret): ImportModel's (model_import.actions)
    actions: dict[str, Callable[[domain.ActionSpec, StepCallback], Generated]] = field(default_factory=dict)
    #: set once a job found the device broken: the worker takes no more jobs
    device_failure: DeviceFailure | None = None
    #: called right after: stops the worker's loop (`process.work` sets it)
    stop_worker: Callable[[], None] = _nothing
    #: how long a run may go without a sign of life (deadline.py)
    deadlines: DeadlinePolicy = field(default_factory=DeadlinePolicy)
    #: this worker's measured speed per task kind, which the deadlines scale by
    speeds: Speedometer = field(default_factory=Speedometer)
    #: set when an abandoned run's engine call did not stop: the engine thread is stuck for good
    engine_hung: bool = False
    #: a task's lost runs beyond which it ends Error 505 (PICSERVE_MAX_LOST_RUNS)
    max_lost_runs: int = recovery.DEFAULT_MAX_LOST


def register(app: procrastinate.App) -> procrastinate.App:
    """Register the job that runs a task (tasks/queue.py's TASK_NAME) on `app` (any connector), once;
    returns `app`."""
    if TASK_NAME not in app.tasks:
        app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)(run_generation)
    return app


@dataclass(frozen=True)
class Finished:
    keys: list[str]
    seeds: list[int]
    texts: list[str] = field(default_factory=list)


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


@dataclass(frozen=True)
class DeviceLost(Requeued):
    """The device failed for good (`error`: the sticky error in words): the task goes back to the queue,
    and the worker stops."""

    error: str


@dataclass(frozen=True)
class TimedOut(Requeued):
    """The run gave no sign of life for `seconds` (its deadline): the task goes back to the queue (a
    loss); if the engine call did not stop, the worker stops too."""

    seconds: float


Outcome = Finished | Failed | Canceled | Requeued


async def run_generation(context: procrastinate.JobContext, task_uid: str) -> None:
    runtime: WorkerRuntime = context.additional_context["picserve"]
    ran: list[domain.ActionSpec] = []  # the spec, once the task is taken
    if runtime.registry is not None:
        runtime.registry.job_started(task_uid)
    try:
        with logs.context(task_uid=task_uid, worker=runtime.name, timed=True):
            await _run(context, runtime, task_uid, ran)
    finally:
        if runtime.device_failure is not None:
            await asyncio.shield(_stop_for_device(runtime, runtime.device_failure))
        elif runtime.registry is not None:
            await asyncio.shield(_report(runtime, ran[0].needs().model_code if ran else None))


async def _stop_for_device(runtime: WorkerRuntime, failure: DeviceFailure) -> None:
    """The device broke (its task is back in the queue): mark the worker unhealthy, count it, stop it."""
    log.error(
        "worker %s: device %s is unusable (%s); it takes no more tasks and stops (exit code %d)",
        runtime.name,
        runtime.device,
        failure,
        DeviceFailure.exit_code,
    )
    metrics.count_device_failure(runtime.device)
    if runtime.registry is not None:
        await runtime.registry.mark_unhealthy(str(failure))
    runtime.stop_worker()


async def _report(runtime: WorkerRuntime, model_code: str | None) -> None:
    """After every job (run or skipped): what the engine holds now and the counts, to the registry
    (read on the engine thread, which the job has handed back)."""
    assert runtime.registry is not None
    try:
        engine = runtime.engine
        holdings, capacity = await runtime.engine_thread.call(lambda: (engine.holdings(), engine.capacity()))
    except Exception:
        log.exception("could not read what the engine holds")
        return
    await runtime.registry.job_done(model_code, holdings, capacity)


async def _run(
    context: procrastinate.JobContext, runtime: WorkerRuntime, task_uid: str, ran: list[domain.ActionSpec]
) -> None:
    started, maybe_applied = await runtime.retry.run_tracked(
        f"task {task_uid}: starting", lambda: runtime.repo.mark_running(task_uid, runtime.name)
    )
    if started is None:
        if maybe_applied:
            # The first try may have started the run and lost its reply: the task would stay Running
            # under this worker's name with no job behind it. Read who holds it; if it is this worker,
            # hand the task back to the queue (a new job, a new run).
            await _hand_back_lost_start(runtime, task_uid)
        else:
            log.info("task %s is no longer queued; skipping", task_uid)
        return
    run, spec = started
    ran.append(spec)
    logs.bind(model=spec.needs().model_code, attempt=run.attempt)
    watch = metrics.TaskWatch(spec)
    outcome: Outcome = Failed(500, INTERNAL_ERROR.format(task_uid=task_uid))
    try:
        outcome = await _execute(context, runtime, run, spec, watch)
    except asyncio.CancelledError:
        outcome = _aborted(context)  # the engine thread has returned: _execute waited for it
        raise
    finally:
        await asyncio.shield(_apply(runtime, run, spec, outcome))
        if isinstance(outcome, DeviceLost):
            runtime.device_failure = DeviceFailure(outcome.error)
        name = "requeued" if isinstance(outcome, Requeued) else type(outcome).__name__.lower()
        watch.done(name, outcome.code if isinstance(outcome, Failed) else None)


async def _execute(
    context: procrastinate.JobContext,
    runtime: WorkerRuntime,
    run: domain.Run,
    spec: domain.ActionSpec,
    watch: metrics.TaskWatch,
) -> Outcome:
    """Run the spec's pipeline and store its images; the outcome, or CancelledError (after the engine
    thread has returned, or hung past its deadline)."""
    deadline = Deadline(runtime.deadlines.limit(spec.work(), runtime.speeds.speed(spec.kind)))
    on_step, on_preview = _step_callback(context, runtime, run, deadline)
    on_step = watch.steps(on_step)
    ran_for: list[float] = []

    def generate() -> tuple[list[bytes], list[int], list[str]]:  # on the engine thread
        started = time.monotonic()
        action = runtime.actions.get(spec.kind)
        with watch.engine_call(runtime.engine.holdings):  # what it loads, for the metrics
            if action is not None:
                generated = action(spec, on_step)
            else:
                generated = pipelines.run(runtime.engine, spec, on_step, on_preview)
        if context.should_abort():  # asked to stop during the VAE decode: no files for this run
            raise errors.TaskCanceled()
        ran_for.append(time.monotonic() - started)
        return generated.pngs(), generated.seeds, generated.texts

    try:
        spec = await asyncio.to_thread(references.restore, spec, runtime.store)
        deadline.alive()  # from here: the engine call
        pngs, seeds, texts = await _own_until_done(
            runtime.engine_thread.submit(generate), deadline, runtime.deadlines.grace
        )
    except errors.TaskCanceled:
        return _aborted(context)
    except RunHung as hung:
        return _hung(runtime, run, hung)
    except Exception as exc:
        if faults.is_broken_device(exc):  # the device's failure, not the task's: it runs again elsewhere
            log.error(
                "task %s: device %s failed; the task goes back to the queue", run.task_uid, runtime.device, exc_info=exc
            )
            return DeviceLost(faults.describe(exc))
        if isinstance(exc, errors.PicserveError):
            return Failed(exc.ret_code, exc.message)
        # a bug or an unexpected runtime failure: logged in full, reported without internals
        log.exception("task %s failed", run.task_uid)
        return Failed(500, INTERNAL_ERROR.format(task_uid=run.task_uid))
    runtime.speeds.record(spec.kind, spec.work(), ran_for[0])

    keys: list[str] = []
    try:
        for data in pngs:
            keys.append(await asyncio.to_thread(runtime.store.put, data))
    except BaseException as exc:  # a cancel or a storage failure mid-way: no partial results are left
        await asyncio.shield(_delete(runtime.store, keys))
        if isinstance(exc, errors.StorageError):
            return Failed(exc.ret_code, exc.message)
        raise
    return Finished(keys, seeds, texts)


def _hung(runtime: WorkerRuntime, run: domain.Run, hung: RunHung) -> Outcome:
    """The outcome of a run abandoned at its deadline (CancelledError when the job was cancelled too:
    the cancel's outcome then). An engine call that did not stop leaves the engine thread stuck: the
    worker stops, to be started again."""
    if hung.returned:
        log.error(
            "task %s: no sign of life for %g s (its deadline); the run stopped when told to, and is given up",
            run.task_uid,
            hung.seconds,
        )
    else:
        runtime.engine_hung = True
        runtime.device_failure = DeviceFailure(
            f"the engine hung: task {run.task_uid}'s run gave no sign of life for {round(hung.seconds, 1):g} s and did "
            f"not stop within {runtime.deadlines.grace:g} s of being told to"
        )
        log.error("task %s: %s; the run is given up and the worker stops", run.task_uid, runtime.device_failure)
    if hung.cancelled:
        raise asyncio.CancelledError()
    return TimedOut(hung.seconds)


async def _own_until_done(
    future: concurrent.futures.Future[tuple[list[bytes], list[int], list[str]]], deadline: Deadline, grace: float
) -> tuple[list[bytes], list[int], list[str]]:
    """The engine call's result. Cancelled meanwhile, it still waits for the engine thread to return
    (the step callback stops it at the next step), then raises CancelledError: the job owns the engine
    until then, so the next job never runs beside this one.

    Past the run's deadline without a sign of life, the engine is told to stop and given `grace`
    seconds to; then `RunHung` is raised, whether it stopped or not (a stuck thread cannot be stopped)."""
    waiting = asyncio.wrap_future(future)
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.wait([waiting], timeout=deadline.remaining())
        except asyncio.CancelledError:
            cancelled = True
            continue
        if not waiting.done() and deadline.expired:
            deadline.stop()
            loop = asyncio.get_running_loop()
            until = loop.time() + grace
            while not waiting.done() and (left := until - loop.time()) > 0:
                try:
                    await asyncio.wait([waiting], timeout=left)
                except asyncio.CancelledError:
                    cancelled = True
            if waiting.done() and not waiting.cancelled():
                if waiting.exception() is None and not cancelled:  # it finished just now after all
                    return waiting.result()
            raise RunHung(deadline.limit, returned=waiting.done(), cancelled=cancelled)
    if cancelled:
        raise asyncio.CancelledError()
    return waiting.result()


def _step_callback(
    context: procrastinate.JobContext, runtime: WorkerRuntime, run: domain.Run, deadline: Deadline
) -> tuple[StepCallback, PreviewCallback | None]:
    """The engine's callbacks (called on its thread after each step and between phases): the first
    is the run's sign of life for its deadline, stops the engine once the job is asked to abort (or
    the deadline passed), and writes progress at most every
    `progress_interval` seconds; the second (None without previews) makes a preview at most every
    `preview_interval` seconds and has it written with the next progress write."""
    loop = asyncio.get_running_loop()
    last_write = [float("-inf")]
    writing: list[concurrent.futures.Future[None]] = []
    last_preview = [float("-inf")]
    pending: list[str] = []  # the preview made since the last write
    last_event = [time.monotonic()]  # the `progress` webhook event: not before an interval has passed

    def on_step(progress: float) -> None:
        if context.should_abort() or deadline.stopping:
            raise errors.TaskCanceled()
        deadline.alive()
        now = time.monotonic()
        # one write at a time: while the database is away, writes are dropped rather than piled up
        if now - last_write[0] >= runtime.progress_interval and not (writing and not writing[0].done()):
            last_write[0] = now
            preview = pending.pop() if pending else None
            event = now - last_event[0] >= runtime.webhook_progress_interval
            if event:
                last_event[0] = now
            writing[:] = [
                asyncio.run_coroutine_threadsafe(_write_progress(runtime, run, progress, preview, event), loop)
            ]

    def on_preview(make: Callable[[], Image.Image]) -> None:
        interval = runtime.preview_interval
        now = time.monotonic()
        if interval is not None and now - last_preview[0] >= interval:
            last_preview[0] = now
            pending[:] = [_data_uri(make())]

    return on_step, (on_preview if runtime.preview_interval is not None else None)


def _data_uri(image: Image.Image) -> str:
    """A preview as a small JPEG data URI (a 128² preview of a 1024² image: 5–15 KB)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


async def _write_progress(
    runtime: WorkerRuntime, run: domain.Run, progress: float, preview: str | None, webhook: bool = False
) -> None:
    """Best effort: a progress write the database cannot take now is dropped; the next one catches up.
    With `webhook`, it also makes the task's `progress` webhook delivery (when it wants one)."""
    try:
        await runtime.repo.record_progress(run, progress, preview, webhook=webhook)
    except errors.ServerBusy as exc:
        log.debug("task %s: progress not written: %s", run.task_uid, exc)
    except Exception:
        log.exception("task %s: progress not written", run.task_uid)


def _aborted(context: procrastinate.JobContext) -> Outcome:
    """A job aborted by a shutdown hands its task back; any other abort is a client's cancel."""
    return Requeued() if context.abort_reason() == AbortReason.SHUTDOWN else Canceled()


async def _apply(runtime: WorkerRuntime, run: domain.Run, spec: domain.ActionSpec, outcome: Outcome) -> None:
    """The one place a run's outcome is written. A superseded run's write is refused (its task was
    queued again and another worker runs it now): its files are deleted and the refusal logged. A task
    that ended has its reference images deleted; a requeued one keeps them for its next run."""
    repo = runtime.repo
    name = type(outcome).__name__.lower()
    written, maybe_applied = await runtime.retry.run_tracked(
        f"task {run.task_uid}: writing {name}", lambda: _write(runtime, run, outcome)
    )
    if not written and maybe_applied:
        # A try whose connection broke may have written it, and this refusal be our own write seen
        # again: the task's state says which.
        state = await runtime.retry.run(f"task {run.task_uid}: reading its run", lambda: repo.run_of(run.task_uid))
        written = state is not None and state == (_STATUS_OF[type(outcome)], run)
    if isinstance(outcome, Finished) and not written:
        await _delete(runtime.store, outcome.keys)
    if written and not isinstance(outcome, Requeued):
        await asyncio.to_thread(references.drop, spec, runtime.store)
    if written and not runtime.engine_hung:
        # What this worker now holds (read on the engine thread); the registry records it too (routing).
        holdings = await runtime.engine_thread.call(runtime.engine.holdings)
        log.info("task %s %s (attempt %d); worker holds %s", run.task_uid, name, run.attempt, holdings)
    elif not written:
        log.warning(
            "task %s: attempt %d by %s was superseded; its outcome (%s) was not written",
            run.task_uid,
            run.attempt,
            run.worker,
            name,
        )


#: the status each outcome leaves its task in (a requeued task is Queuing with no run: never matched)
_STATUS_OF: dict[type, domain.TaskStatus] = {
    Finished: domain.TaskStatus.FINISHED,
    Failed: domain.TaskStatus.ERROR,
    Canceled: domain.TaskStatus.CANCELED,
    Requeued: domain.TaskStatus.QUEUING,
    DeviceLost: domain.TaskStatus.QUEUING,
}


async def _hand_back_lost_start(runtime: WorkerRuntime, task_uid: str) -> None:
    """After a start whose reply was lost: if this worker holds the task, queue it again."""
    state = await runtime.retry.run(f"task {task_uid}: reading its run", lambda: runtime.repo.run_of(task_uid))
    if state is None or state[0] is not domain.TaskStatus.RUNNING or state[1] is None:
        log.info("task %s is no longer queued; skipping", task_uid)
        return
    run = state[1]
    if run.worker != runtime.name:
        log.info("task %s was taken by %s; skipping", task_uid, run.worker)
        return
    requeued = await runtime.retry.run(f"task {task_uid}: queueing it again", lambda: runtime.repo.requeue_run(run))
    log.warning("task %s: its start's reply was lost; handed back to the queue (%s)", task_uid, requeued is not None)


async def _write(runtime: WorkerRuntime, run: domain.Run, outcome: Outcome) -> bool:
    """Write `outcome`: True when written, False when the run was superseded. A hand-back records its
    cause; a loss (a failed device, a hang) counts against the task's attempt limit, and is logged and
    counted once written."""
    repo = runtime.repo
    if isinstance(outcome, Finished):
        return await repo.finish_task(run, outcome.keys, outcome.seeds, outcome.texts)
    if isinstance(outcome, Failed):
        return await repo.fail_task(run, outcome.code, outcome.message)
    if isinstance(outcome, Canceled):
        return await repo.cancel_run(run)
    cause, detail = _cause_of(outcome)
    requeue = await repo.requeue_run(run, cause, runtime.max_lost_runs, detail)
    if requeue is not None and cause.is_loss:
        recovery.lost_run(cause, requeue, runtime.max_lost_runs, detail)
        metrics.lost_runs_counter(metrics.WORKER_REGISTRY)(cause, requeue)
    return requeue is not None


def _cause_of(outcome: Requeued) -> tuple[domain.RunEnd, str]:
    """How a handed-back run ended, as its record keeps it, with what it was."""
    if isinstance(outcome, DeviceLost):
        return domain.RunEnd.DEVICE_LOST, outcome.error
    if isinstance(outcome, TimedOut):
        return domain.RunEnd.TIMED_OUT, f"no sign of life for {round(outcome.seconds, 1):g} s"
    return domain.RunEnd.REQUEUED, ""


async def _delete(store: Store, keys: list[str]) -> None:
    for key in keys:
        await asyncio.to_thread(store.delete, key)

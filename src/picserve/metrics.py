"""Prometheus metrics: the API's series (served at `/metrics`) and a worker's (`worker --metrics-port`).

Two registries, one per kind of process, so that an API and a worker sharing a process (the tests,
an embedding program) each expose only their own series:

- `API_REGISTRY`: requests by action and RetCode, their latency; at scrape time, read from the
  database, the queue depth per main model and how many keys have how many open tasks (bucketed:
  never one series per key), and the prompt translator's cache hits and misses.
- `WORKER_REGISTRY`: task durations by model and size, denoising step times, model loads and their
  durations, LoRA switches, task errors by ErrorCode, device failures (the worker then stops), and
  GPU memory (only where torch has CUDA).
- Both: `picserve_lost_runs_total`, the runs lost (a dead worker, a failed device, a hung run) by
  cause and what became of their task, counted where the loss was written (a worker's own run, or
  the stalled-worker sweep, which API processes and workers both run).

The worker's numbers are taken at the job's boundary (worker/jobs.py) by a `TaskWatch`: the engine
knows nothing of Prometheus. What the engine did is derived from what the job sees of it: model and
LoRA loads from `engine.holdings()` before and after the call, step times from the step callback's
calls, a model load's duration from the call's start to its first callback (the engine calls back
once the model is loaded, before the first step).

Counters and histograms live as long as their process; tests read deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from picserve import domain
    from picserve.catalog import Catalog
    from picserve.tasks.repository import TaskRepository
    from picserve.translate.prompts import PromptTranslator

__all__ = [
    "API_REGISTRY",
    "CONTENT_TYPE",
    "OPEN_TASK_BUCKETS",
    "SIZE_BUCKETS",
    "WORKER_REGISTRY",
    "TaskWatch",
    "count_device_failure",
    "lost_runs_counter",
    "observe_request",
    "open_task_bucket",
    "render_api",
    "render_worker",
    "serve_worker",
    "size_bucket",
]

log = logging.getLogger(__name__)

#: the media type of the text exposition format
CONTENT_TYPE = CONTENT_TYPE_LATEST

# the `*_created` timestamp series only repeat the process start in the text format: left out
disable_created_metrics()

API_REGISTRY = CollectorRegistry(auto_describe=True)
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)

# --- the API -------------------------------------------------------------------------------------

_REQUESTS = Counter(
    "picserve_requests",
    "PICPIK requests answered, by Action and RetCode (an Action the server does not serve counts as 'unknown')",
    ["action", "ret_code"],
    registry=API_REGISTRY,
)
_REQUEST_SECONDS = Histogram(
    "picserve_request_duration_seconds",
    "Seconds from a PICPIK request's arrival to its reply, by Action",
    ["action"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=API_REGISTRY,
)

#: the buckets of `picserve_keys_by_open_tasks`: (label, lowest count in it), ascending
OPEN_TASK_BUCKETS = (("0", 0), ("1-9", 1), ("10-99", 10), ("100+", 100))


def observe_request(action: str, ret_code: int, seconds: float) -> None:
    """Count one reply. `action` must be a served Action's name, or "" for any other (the caller
    checks: a client's Action string never becomes a label, so clients cannot add series)."""
    label = action or "unknown"
    _REQUESTS.labels(action=label, ret_code=str(ret_code)).inc()
    _REQUEST_SECONDS.labels(action=label).observe(seconds)


def open_task_bucket(count: int) -> str:
    """The `open` label of a key with `count` open tasks."""
    return next(label for label, low in reversed(OPEN_TASK_BUCKETS) if count >= low)


async def render_api(
    repo: TaskRepository, translator: PromptTranslator | None = None, catalog: Catalog | None = None
) -> bytes:
    """The API's series in the text format, with the database's read now. Main models of `catalog`
    with nothing queued show a depth of 0. While the database is unreachable the scrape still
    answers: the database series are left out and `picserve_database_up` is 0."""
    families: list[Metric] = []
    up = GaugeMetricFamily("picserve_database_up", "1 when this scrape could read the database, else 0")
    try:
        by_model = await repo.queued_by_model()
        histogram = await repo.open_task_histogram()
    except Exception as exc:
        log.warning("metrics: the database could not be read (%s: %s)", type(exc).__name__, exc)
        up.add_metric([], 0)
    else:
        up.add_metric([], 1)
        models = await asyncio.to_thread(lambda: list(catalog.entries("main"))) if catalog is not None else []
        depth = GaugeMetricFamily(
            "picserve_queue_depth", "Tasks queued (not yet running), by main model", labels=["model"]
        )
        for model in sorted({*models, *by_model}):
            depth.add_metric([model], by_model.get(model, 0))
        keys = GaugeMetricFamily(
            "picserve_keys_by_open_tasks",
            "Keys by how many open (queued or running) tasks each has, in buckets; revoked keys without any left out",
            labels=["open"],
        )
        counted = dict.fromkeys((label for label, _ in OPEN_TASK_BUCKETS), 0)
        for open_count, key_count in histogram.items():
            counted[open_task_bucket(open_count)] += key_count
        for label, value in counted.items():
            keys.add_metric([label], value)
        families += [depth, keys]
    families.append(up)
    if translator is not None:
        hits, misses = translator.cache_stats()
        families.append(
            CounterMetricFamily(
                "picserve_translation_cache_hits", "Prompt segments translated from the cache", value=hits
            )
        )
        families.append(
            CounterMetricFamily(
                "picserve_translation_cache_misses", "Prompt segments sent to a translation model", value=misses
            )
        )
    return generate_latest(_Joined(API_REGISTRY, families))


class _Joined:
    """A registry's metrics and some read at scrape time, as one collector for `generate_latest`."""

    def __init__(self, registry: CollectorRegistry, extra: list[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        yield from self._extra


# --- a worker ------------------------------------------------------------------------------------

#: the `size` label: a task's output pixels (width × height × BatchSize) rounded up to one of these
#: megapixels (2^20 pixels: one 1024×1024 image is "1MP"); more than the last is "more"
SIZE_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 16)

_TASK_SECONDS = Histogram(
    "picserve_worker_task_duration_seconds",
    "Seconds a worker spent on a task (reference images, generation, storing the results), by main "
    "model, size (output megapixels, bucketed) and outcome (finished, failed, canceled, requeued)",
    ["model", "size", "outcome"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    registry=WORKER_REGISTRY,
)
_STEP_SECONDS = Histogram(
    "picserve_worker_step_duration_seconds",
    "Seconds per denoising step (the first step of each chunk of a batch is left out: it carries the "
    "setup), by main model and size",
    ["model", "size"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
    registry=WORKER_REGISTRY,
)
_MODEL_LOADS = Counter(
    "picserve_worker_model_loads",
    "Main models a worker loaded for a task (not held before it, held after it)",
    ["model"],
    registry=WORKER_REGISTRY,
)
_MODEL_LOAD_SECONDS = Histogram(
    "picserve_worker_model_load_duration_seconds",
    "Seconds from the engine call's start to its first callback, for tasks that loaded their main model",
    ["model"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
    registry=WORKER_REGISTRY,
)
_LORA_SWITCHES = Counter(
    "picserve_worker_lora_switches",
    "Tasks whose set of LoRAs differs from the previous task's on the same worker",
    registry=WORKER_REGISTRY,
)
_LORA_LOADS = Counter(
    "picserve_worker_lora_loads",
    "LoRAs a worker's engine came to hold during a task (not held before it)",
    registry=WORKER_REGISTRY,
)
_TASK_ERRORS = Counter(
    "picserve_worker_task_errors",
    "Tasks that ended in Error, by ErrorCode (a client's cancel, 510, is counted as outcome=canceled "
    "in picserve_worker_task_duration_seconds, not here)",
    ["code"],
    registry=WORKER_REGISTRY,
)
_DEVICE_FAILURES = Counter(
    "picserve_worker_device_failures",
    "Sticky device errors (an illegal memory access, a device-side assert, an ECC fault, …) after which "
    "a worker requeued its task and stopped, by device",
    ["device"],
    registry=WORKER_REGISTRY,
)


def count_device_failure(device: str) -> None:
    """A worker found its device unusable (engine/faults.py), or its engine hung, and stops."""
    _DEVICE_FAILURES.labels(device=device).inc()


# --- lost runs (either kind of process: the stalled-worker sweep runs in both) ---------------------

_LOST_RUN_HELP = (
    "Runs lost by cause (lost: the worker died; device_lost: its device failed; timed_out: it hung past its "
    "deadline) and what became of the task (requeued, or ended: Error 505 after PICSERVE_MAX_LOST_RUNS)"
)
_LOST_RUNS = {
    registry: Counter("picserve_lost_runs", _LOST_RUN_HELP, ["cause", "task"], registry=registry)
    for registry in (API_REGISTRY, WORKER_REGISTRY)
}


def lost_runs_counter(registry: CollectorRegistry) -> Callable[[domain.RunEnd, domain.Requeue], None]:
    """What counts a lost run in `registry` (API_REGISTRY or WORKER_REGISTRY): recovery's `on_loss`."""
    counter = _LOST_RUNS[registry]

    def count(cause: domain.RunEnd, requeue: domain.Requeue) -> None:
        counter.labels(cause=cause.value, task="ended" if requeue.gave_up else "requeued").inc()

    return count


def size_bucket(spec: domain.ActionSpec) -> str:
    """The `size` label of a task: its output megapixels, rounded up to a bucket of SIZE_BUCKETS
    ("n/a" for a task kind whose spec has no width and height)."""
    width, height = getattr(spec, "width", None), getattr(spec, "height", None)
    if width is None or height is None:
        return "n/a"
    megapixels = width * height * getattr(spec, "batch_size", 1) / 2**20
    return next((f"{bound:g}MP" for bound in SIZE_BUCKETS if megapixels <= bound), "more")


#: Holdings = engine.holdings: {"main": [ModelCode…], "lora": [adapter name…]}
Holdings = Callable[[], Mapping[str, list[str]]]


class TaskWatch:
    """One task's run on a worker, as its metrics see it. Made by the job once it has taken the task.

    `steps(on_step)` wraps the step callback given to the engine, `engine_call(holdings)` surrounds
    the engine call (both on the engine thread), and `done(outcome, code)` records the run (on the
    event loop, once the engine thread has returned).
    """

    #: the LoRA set of the last task run in this process (one worker per process)
    _previous_loras: frozenset[str] | None = None
    _lock = threading.Lock()

    def __init__(self, spec: domain.ActionSpec, clock: Callable[[], float] = time.perf_counter) -> None:
        needs = spec.needs()
        self.model = needs.model_code or spec.kind
        self.size = size_bucket(spec)
        self._loras = frozenset(needs.loras)
        self._clock = clock
        self.started = clock()
        self._call_started: float | None = None
        self._first_callback: float | None = None
        self._last: tuple[float, float, bool] | None = None  # (time, progress, was a step) of the last callback

    def steps(self, on_step: Callable[[float], None]) -> Callable[[float], None]:
        """`on_step`, timing the denoising steps between its calls.

        The engine calls back after every step and also before each chunk of the batch (progress not
        moving). A step's time is the gap between two calls that both moved the progress; so the first
        step of each chunk, which carries the chunk's setup, is left out."""
        step_seconds = _STEP_SECONDS.labels(model=self.model, size=self.size)

        def timed(progress: float) -> None:
            now = self._clock()
            if self._first_callback is None:
                self._first_callback = now
            moved = self._last is not None and progress > self._last[1]
            if moved and self._last is not None and self._last[2]:
                step_seconds.observe(now - self._last[0])
            self._last = (now, progress, moved)
            on_step(progress)

        return timed

    @contextlib.contextmanager
    def engine_call(self, holdings: Holdings) -> Iterator[None]:
        """Around the engine call (on the engine thread): what it came to hold is counted as loaded."""
        before = _held(holdings)
        self._call_started = self._clock()
        try:
            yield
        finally:
            after = _held(holdings)
            if before is not None and after is not None:
                self._count_loads(before, after)

    def _count_loads(self, before: Mapping[str, list[str]], after: Mapping[str, list[str]]) -> None:
        if self.model in after.get("main", ()) and self.model not in before.get("main", ()):
            _MODEL_LOADS.labels(model=self.model).inc()
            if self._call_started is not None and self._first_callback is not None:
                _MODEL_LOAD_SECONDS.labels(model=self.model).observe(self._first_callback - self._call_started)
        new_loras = set(after.get("lora", ())) - set(before.get("lora", ()))
        if new_loras:
            _LORA_LOADS.inc(len(new_loras))

    def done(self, outcome: str, code: int | None = None) -> None:
        """The run ended in `outcome` ("finished", "failed", "canceled", "requeued"); `code` is a
        failure's ErrorCode."""
        _TASK_SECONDS.labels(model=self.model, size=self.size, outcome=outcome).observe(self._clock() - self.started)
        if code is not None:
            _TASK_ERRORS.labels(code=str(code)).inc()
        if self._call_started is None:
            return  # the engine was never called: no LoRA was applied
        with TaskWatch._lock:
            previous, TaskWatch._previous_loras = TaskWatch._previous_loras, self._loras
        if previous is not None and previous != self._loras:
            _LORA_SWITCHES.inc()


def _held(holdings: Holdings) -> Mapping[str, list[str]] | None:
    try:
        return holdings()
    except Exception:  # metrics never fail a task; the job's own holdings read logs the error
        log.debug("metrics: could not read what the engine holds", exc_info=True)
        return None


class _GpuMemory:
    """GPU memory of the worker's device, read from torch at scrape time; nothing without CUDA (and
    nothing in a worker whose engine has not imported torch: a fake engine's)."""

    def __init__(self) -> None:
        self.device: str | None = None

    def collect(self) -> Iterable[Metric]:
        torch: Any = sys.modules.get("torch")
        if torch is None or self.device is None:
            return []
        try:
            if not torch.cuda.is_available():
                return []
            device = torch.device("cuda" if self.device == "auto" else self.device)
            if device.type != "cuda":
                return []
            index = device.index if device.index is not None else torch.cuda.current_device()
            family = GaugeMetricFamily(
                "picserve_worker_gpu_memory_bytes",
                "GPU memory of the worker's device: allocated by tensors, reserved by torch's allocator, "
                "and the device's total",
                labels=["device", "kind"],
            )
            name = f"cuda:{index}"
            family.add_metric([name, "allocated"], torch.cuda.memory_allocated(index))
            family.add_metric([name, "reserved"], torch.cuda.memory_reserved(index))
            family.add_metric([name, "total"], torch.cuda.get_device_properties(index).total_memory)
            return [family]
        except Exception:  # a broken driver must not break the scrape
            log.debug("metrics: could not read GPU memory", exc_info=True)
            return []


_GPU = _GpuMemory()
WORKER_REGISTRY.register(_GPU)


def render_worker() -> bytes:
    """A worker's series in the text format (what its metrics server answers)."""
    return generate_latest(WORKER_REGISTRY)


def serve_worker(port: int, host: str, device: str) -> Callable[[], None]:
    """Serve this worker's series on http://`host`:`port`/metrics (a thread of prometheus_client's)
    and report the GPU memory of `device`; returns the function that stops the server. Port 0: no
    server, and the function does nothing."""
    if not port:
        return lambda: None
    from prometheus_client import start_http_server

    _GPU.device = device
    server, thread = start_http_server(port, addr=host, registry=WORKER_REGISTRY)
    log.info("worker metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

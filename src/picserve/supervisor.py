"""Process supervision for `picserve serve`: the database, the worker children, the API server."""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from picserve.config import Settings
from picserve.resilience import Backoff
from picserve.tasks import embedded_pg

__all__ = [
    "Supervisor",
    "die_with_parent",
    "exit_reason",
    "serve",
    "spawn_worker",
    "visible_gpus",
    "worker_devices",
]

log = logging.getLogger(__name__)


def worker_devices(device: str, workers: int, gpu_count: int) -> list[str]:
    """The PICSERVE_DEVICE of each of `serve`'s `workers` workers, on a host with `gpu_count` visible GPUs.

    "auto" or "cuda" on a GPU host: one GPU per worker, worker i on cuda:i (several workers on one GPU
    would each plan for most of its memory, while the other GPUs idle). Any other device ("cpu",
    "cuda:1") goes to every worker as it is, as does "auto" on a host without a GPU (CPU workers).
    Raises ValueError, saying why and what to do, when there are more workers than GPUs.
    """
    if device not in ("auto", "cuda") or workers <= 0 or (device == "auto" and gpu_count <= 0):
        return [device] * max(0, workers)
    if workers > gpu_count:
        need = "worker on device {!r} needs a GPU" if workers == 1 else "workers on device {!r} need one GPU each"
        seen = {0: "no GPU is", 1: "1 GPU is"}.get(gpu_count, f"{gpu_count} GPUs are")
        fix = f"lower --workers / PICSERVE_WORKERS to at most {gpu_count}, or " if gpu_count else ""
        shared = "cuda:0, cpu" if gpu_count else "cpu"
        raise ValueError(
            f"{workers} {need.format(device)}, and {seen} visible (CUDA_VISIBLE_DEVICES counts): {fix}name the device "
            f"every worker shares (--device / PICSERVE_DEVICE: {shared})"
        )
    return [f"cuda:{index}" for index in range(workers)]


def visible_gpus() -> int:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applied); imports torch, so read it only
    when a plan needs it (an API-only `serve` never does), and only on a host with a GPU driver (NVIDIA's,
    or ROCm's /dev/kfd): elsewhere the answer is 0 without loading torch into the API's process."""
    if not _gpu_driver():
        return 0
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _gpu_driver() -> bool:
    """Whether a GPU driver is loaded here: NVIDIA's (/proc/driver/nvidia/gpus, /dev/nvidiaN) or ROCm's
    (/dev/kfd)."""
    dev = Path("/dev")
    return Path("/proc/driver/nvidia/gpus").is_dir() or (dev / "kfd").exists() or any(dev.glob("nvidia[0-9]*"))


def spawn_worker(
    settings: Settings, database_url: str, index: int = 0, devices: Sequence[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `picserve worker --name worker-INDEX`, tied to this process (see `die_with_parent`), on
    `devices[index]` (`worker_devices`' plan; `settings.device` without one)."""
    env = {**os.environ, **settings.to_env(), "PICSERVE_DATABASE_URL": database_url}
    if devices is not None:
        env["PICSERVE_DEVICE"] = devices[index]
    if settings.worker_metrics_port:  # one metrics port per worker: worker-INDEX serves on port + INDEX
        env["PICSERVE_WORKER_METRICS_PORT"] = str(settings.worker_metrics_port + index)
    command = [sys.executable, "-m", "picserve", "worker", "--name", f"worker-{index}"]
    return subprocess.Popen([*command, "--supervisor-pid", str(os.getpid())], env=env)


def die_with_parent(supervisor_pid: int) -> None:
    """Linux: in a worker `serve` started, get SIGTERM when `serve` dies, even by SIGKILL, so no worker is orphaned.

    The worker's first act (not a `preexec_fn`, which is unsafe in a process with threads).
    PR_SET_PDEATHSIG fires when the *thread* that forked us exits, not only the process: the
    supervisor starts every worker from its one watcher thread, which outlives them. If `serve` died
    before this call, the signal would never come: then the parent is already another process, and
    the worker leaves at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive serve", ctypes.get_errno())
    if os.getppid() != supervisor_pid:
        log.warning("the supervisor (pid %d) is gone: not starting", supervisor_pid)
        raise SystemExit(0)


def exit_reason(returncode: int) -> str:
    """`exited with code 1`, `was killed by SIGKILL`: a `Popen.returncode` in words."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


@dataclass
class _Slot:
    """One worker position: its process (None while it waits to restart) and its crash history."""

    index: int
    backoff: Backoff
    child: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0


class Supervisor:
    """Keeps `count` children alive until stopped; a crashed one is started again after a backoff.

    `spawn(index)` starts child `index` (`worker-INDEX` in the logs). One thread starts them all,
    watches them, and stops them: the thread their parent-death signal is tied to.
    """

    def __init__(
        self,
        spawn: Callable[[int], subprocess.Popen[bytes]],
        count: int,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        poll_interval: float = 1.0,
    ):
        self._spawn, self._poll = spawn, poll_interval
        self._slots = [_Slot(i, backoff()) for i in range(count)]
        self._stop = threading.Event()
        self._stop_timeout = 30.0
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="picserve-supervisor", daemon=True)
        self._thread.start()
        self._started.wait()  # the first children are started (or scheduled again) before serving

    @property
    def children(self) -> list[subprocess.Popen[bytes]]:
        """The children running now (a crashed one waiting for its restart is not here)."""
        return [slot.child for slot in self._slots if slot.child is not None]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every child, `timeout` seconds for them to exit, then SIGKILL to the rest."""
        self._stop_timeout = timeout
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for slot in self._slots:
                self._start(slot)
            self._started.set()
            while not self._stop.is_set():
                now = time.monotonic()
                for slot in self._slots:
                    self._check(slot, now)
                waits = [slot.restart_at - now for slot in self._slots if slot.child is None]
                self._stop.wait(max(0.0, min([self._poll, *waits])))
        except Exception:
            log.exception("the worker supervisor failed; stopping the workers")
        finally:
            self._started.set()
            self._terminate(self._stop_timeout)

    def _start(self, slot: _Slot) -> None:
        slot.started_at = time.monotonic()
        try:
            slot.child = self._spawn(slot.index)
        except OSError as exc:
            delay = slot.backoff.next_delay(0.0)
            slot.restart_at = time.monotonic() + delay
            log.error("worker-%d could not be started (%s); trying again in %g s", slot.index, exc, delay)

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.child is None:
            if now >= slot.restart_at:
                self._start(slot)
            return
        returncode = slot.child.poll()
        if returncode is None:
            return
        ran_for = now - slot.started_at
        delay = slot.backoff.next_delay(ran_for)
        slot.child, slot.restart_at = None, now + delay
        log.warning(
            "worker-%d %s after %.0f s; starting it again in %g s", slot.index, exit_reason(returncode), ran_for, delay
        )

    def _terminate(self, timeout: float) -> None:
        children = self.children
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %g s: killing it", child.pid, timeout)
                child.kill()
                child.wait()


def _worker_devices(settings: Settings) -> list[str]:
    """`worker_devices` for `settings`, the GPUs counted only where the plan needs them (an "auto" or
    "cuda" device, workers to start); SystemExit with its message where it refuses."""
    needs_gpus = settings.workers > 0 and settings.device in ("auto", "cuda")
    try:
        devices = worker_devices(settings.device, settings.workers, visible_gpus() if needs_gpus else 0)
    except ValueError as exc:  # said plainly, no traceback
        raise SystemExit(f"picserve serve: {exc}") from None
    if needs_gpus and devices[0] != settings.device:
        log.info("one GPU per worker: %s", ", ".join(f"worker-{i} on {d}" for i, d in enumerate(devices)))
    return devices


def serve(settings: Settings, access_log: bool | None = None) -> None:
    """API + `settings.workers` workers on one database, in the foreground until interrupted.

    `access_log`: uvicorn's line per HTTP request; by default only at log level debug (a task's polling
    alone writes two a second; the API logs each refusal itself, see api/requestlog.py)."""
    devices = _worker_devices(settings)  # first: a plan that cannot run refuses before anything starts
    import uvicorn

    from picserve.api.app import create_app
    from picserve.catalog import Catalog

    if not Catalog(settings.models_dir).entries("main"):
        log.warning(
            "no main model in %s: add SDXL checkpoints there, or run `picserve models make-tiny` "
            "for the tiny test model",
            settings.models_dir / "main",
        )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found: make that a
    # clean exit, so the workers and the embedded database below are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with embedded_pg.database(settings) as url:
        supervisor = Supervisor(functools.partial(spawn_worker, settings, url, devices=devices), settings.workers)
        try:
            app = create_app(settings.evolve(database_url=url))
            # What is imported and built by now lives as long as the process: out of the collector's reach,
            # so a full collection scans only what requests made. Under load those took up to 90 ms, the
            # slowest polls' time (docs/performance.md, the fast submit path).
            gc.collect()
            gc.freeze()
            uvicorn.run(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=settings.log_level.lower() == "debug" if access_log is None else access_log,
                # JSON logs: uvicorn's records go to the root logger's handler too, instead of its own text
                log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            )
        finally:
            supervisor.stop()

"""Process supervision for `picserve serve`: the database, the worker children, the API server."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from picserve.config import Settings

__all__ = ["database", "serve", "spawn_worker"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: PICSERVE_DATABASE_URL when set, else the embedded server in the data folder."""
    if settings.database_url:
        yield settings.database_url
        return
    from picserve.tasks.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(settings.pg_dir)
    try:
        yield server.uri
    finally:
        server.stop()


def spawn_worker(settings: Settings, database_url: str, index: int = 0) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "PICSERVE_DATABASE_URL": database_url}
    return subprocess.Popen(
        [sys.executable, "-m", "picserve", "worker", "--name", f"worker-{index}"], env=env, preexec_fn=_die_with_parent
    )


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when `serve` dies, even by SIGKILL, so no worker is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _Supervisor:
    """Keeps `count` worker children alive until stopped; a crashed worker is started again."""

    def __init__(self, settings: Settings, database_url: str, count: int):
        self.settings, self.database_url = settings, database_url
        self.children = [spawn_worker(settings, database_url, i) for i in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(2.0):
            for i, child in enumerate(self.children):
                if child.poll() is not None and not self._stop.is_set():
                    log.warning("worker-%d exited with %s; starting it again", i, child.returncode)
                    self.children[i] = spawn_worker(self.settings, self.database_url, i)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def serve(settings: Settings) -> None:
    """API + `settings.workers` workers on one database, in the foreground until interrupted."""
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
    with database(settings) as url:
        supervisor = _Supervisor(settings, url, settings.workers)
        try:
            uvicorn.run(
                create_app(settings.evolve(database_url=url)),
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
            )
        finally:
            supervisor.stop()

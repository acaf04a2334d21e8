"""A PostgreSQL server of the operating system's own (Debian's `postgresql` package), started and stopped
by a test: `initdb` and `pg_ctl` in a temporary folder, listening on 127.0.0.1 at a free port.

Unlike the embedded server (`tasks/embedded_pg.py`, unix socket only), this one can be stopped under a
running picserve (`pg_ctl stop -m fast` or `-m immediate`) and started again on the same port and data,
which is what the database-outage tests need. The binaries are looked for with `pg_config --bindir`,
then in /usr/lib/postgresql/*/bin (newest first), then on PATH; `find_bindir()` returns None without
them, and `skip_reason()` says why in words for `pytest.skip` (`.ci/run` installs the package where
apt is usable). PostgreSQL refuses to run as root: as root the server runs as the `postgres` account
(made by the Debian package), or `nobody`, and its folder is made outside pytest's root-only tmp.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.processes import free_port

__all__ = ["DebianPostgres", "find_bindir", "skip_reason"]

_TOOLS = ("initdb", "pg_ctl", "postgres")


def _has_tools(folder: Path) -> bool:
    return all((folder / tool).is_file() and os.access(folder / tool, os.X_OK) for tool in _TOOLS)


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", folder.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = [shutil.which(tool) for tool in _TOOLS]
    if all(on_path):
        candidates.append(Path(os.path.realpath(on_path[0] or "")).parent)
    return next((folder for folder in candidates if _has_tools(folder)), None)


def _run_as() -> str | None:
    """The account the server runs as: None (this one) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


def skip_reason() -> str | None:
    """Why a test needing this server cannot run here, or None when it can."""
    if find_bindir() is None:
        return (
            "needs Debian's PostgreSQL binaries (initdb, pg_ctl, postgres): none found by `pg_config --bindir`, in "
            "/usr/lib/postgresql/*/bin or on PATH; install the `postgresql` package (.ci/run does where apt is usable)"
        )
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root, and there is neither a `postgres` nor a `nobody` account to run PostgreSQL as"
    return None


class DebianPostgres:
    """One PostgreSQL cluster in a folder of its own, on 127.0.0.1:`port`, trust authentication.

    `start()` (initdb the first time), `stop(mode)` with pg_ctl's modes (`smart`, `fast`, `immediate`),
    `restart()`; `remove()` stops it and deletes its folder. `url` is the superuser's URL to the
    `postgres` database.
    """

    def __init__(self, bindir: Path | None = None, port: int | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(skip_reason() or "PostgreSQL binaries not found")
        self.bindir = found
        self.port = port or free_port()
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="picserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user is not None:  # a root-owned 0700 folder of its own, given to that account
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # LC_ALL=C: initdb wants a locale that exists; the account's HOME may not be ours to use
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root, check=False, user=self.user
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def start(self, timeout: float = 60) -> DebianPostgres:
        if not self._initialised:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            self._initialised = True
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c max_connections=100"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until a connection succeeds (pg_ctl -w may return while recovery still refuses them)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: `fast` ends every session cleanly, `immediate` kills the server
        (it recovers from its WAL at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DebianPostgres:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.remove()

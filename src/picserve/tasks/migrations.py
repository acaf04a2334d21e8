"""picserve's own tables change only through numbered migrations, each applied once and in order.

A migration is a file `sql/migrations/NNNN_name.sql` in this package: plain SQL, run in a
transaction (so nothing like `CREATE INDEX CONCURRENTLY`), never edited once released — a change is
a new file with the next number. `picserve_migrations` records which ones a database has.
`upgrade` applies the missing ones under an advisory lock, so whichever process starts first (the
API, a worker, `picserve db upgrade`) does it and the others wait for it, then find nothing to do.

A database made before migrations were recorded (the first release: picserve_keys and
picserve_tasks, no picserve_migrations) already has 0001's tables: 0001 is recorded as applied
without running it, and the later ones run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from psycopg import AsyncConnection

__all__ = ["MIGRATIONS", "SCHEMA_LOCK", "Migration", "MigrationError", "MigrationStatus", "status", "upgrade"]

log = logging.getLogger(__name__)

#: the advisory lock that serialises schema changes (procrastinate's schema and these migrations)
SCHEMA_LOCK = 0x70696373  # "pics"

_FILE = re.compile(r"(\d{4})_(\w+)\.sql")
#: the tables of the layout from before migrations were recorded, which 0001 creates
_FIRST_LAYOUT = ("picserve_keys", "picserve_tasks")


class MigrationError(Exception):
    """The migration files, or the database's tables, are not in a state migrations can work from."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """`0002_runs_and_retention`: the file name without `.sql`."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    #: when it was applied; None when it was not recorded (see `pending`)
    applied_at: datetime | None
    #: `upgrade` would run it. False with no `applied_at`: 0001 on a database of the first release,
    #: whose tables are there already (recorded, not run, on the next upgrade)
    pending: bool

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def _discover() -> tuple[Migration, ...]:
    found: dict[int, Migration] = {}
    for entry in resources.files("picserve.tasks").joinpath("sql", "migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d}: {found[version].label}, {entry.name}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


#: every migration this code knows, by version
MIGRATIONS: tuple[Migration, ...] = _discover()


async def upgrade(conn: AsyncConnection[Any]) -> list[str]:
    """Apply the pending migrations in order; returns their labels (empty when up to date).

    Runs under the schema lock in one transaction: the caller's, when it has one open (it commits),
    else a transaction of its own, committed here. Either every pending migration is applied or none.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        # Re-entrant: a caller that holds the lock already (database._ensure_schema) just keeps it.
        # Whoever waited here sees the winner's committed tables in its next statement.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        recorded = await _recorded(conn)
        if recorded is None:
            first_layout = await _first_layout(conn)
            await conn.execute(
                "CREATE TABLE picserve_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: set[int] = set()
            if first_layout:
                first = MIGRATIONS[0]
                log.info("database of the first release: recording %s as applied (its tables exist)", first.label)
                await _record(conn, first)
                done.add(first.version)
        else:
            done = set(recorded)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            log.info("applying migration %s", migration.label)
            # Sent without parameters: several statements in one go, and `%` needs no escaping.
            await conn.execute(migration.sql)
            await _record(conn, migration)
            applied_now.append(migration.label)
        unknown = sorted(done - {m.version for m in MIGRATIONS})
        if unknown:
            log.warning("the database has migrations this code does not know (a newer release's?): %s", unknown)
    return applied_now


async def status(conn: AsyncConnection[Any]) -> list[MigrationStatus]:
    """Each migration, known to this code or recorded in the database, by version; changes nothing."""
    recorded = await _recorded(conn)
    # A first-release database: 0001's tables are there, unrecorded; `upgrade` records it, not runs it.
    baseline = MIGRATIONS[0].version if recorded is None and await _first_layout(conn) else None
    recorded = recorded or {}
    result = [
        MigrationStatus(
            m.version,
            m.name,
            recorded[m.version][1] if m.version in recorded else None,
            pending=m.version not in recorded and m.version != baseline,
        )
        for m in MIGRATIONS
    ]
    known = {m.version for m in MIGRATIONS}
    result += [
        MigrationStatus(version, name, applied_at, pending=False)
        for version, (name, applied_at) in recorded.items()
        if version not in known
    ]
    return sorted(result, key=lambda s: s.version)


async def _recorded(conn: AsyncConnection[Any]) -> dict[int, tuple[str, datetime]] | None:
    """version → (name, applied_at) of the recorded migrations; None when there is no picserve_migrations."""
    cur = await conn.execute("SELECT to_regclass('picserve_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not (row and row[0]):
        return None
    cur = await conn.execute("SELECT version, name, applied_at FROM picserve_migrations")
    return {int(version): (str(name), applied_at) for version, name, applied_at in await cur.fetchall()}


async def _first_layout(conn: AsyncConnection[Any]) -> bool:
    """Whether the first release's tables are all there (True) or none of them (False)."""
    cur = await conn.execute("SELECT count(to_regclass(t)) FROM unnest(%s::text[]) AS t", (list(_FIRST_LAYOUT),))
    row = await cur.fetchone()
    present = int(row[0]) if row else 0
    if 0 < present < len(_FIRST_LAYOUT):
        raise MigrationError(
            f"the database has some of {', '.join(_FIRST_LAYOUT)} but no picserve_migrations: "
            "not a layout picserve made; fix it by hand"
        )
    return present == len(_FIRST_LAYOUT)


async def _record(conn: AsyncConnection[Any], migration: Migration) -> None:
    await conn.execute(
        "INSERT INTO picserve_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
    )

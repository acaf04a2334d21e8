"""The PostgreSQL side: the pool, the procrastinate App on it, and the repository, opened together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import procrastinate
import procrastinate.schema
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from picserve import errors
from picserve.tasks import jobs, migrations
from picserve.tasks.postgres import PostgresRepository

__all__ = ["Database", "make_app", "open_database", "upgrade_schema"]

log = logging.getLogger(__name__)

# Serialises schema changes when the API and several workers start at once (migrations take it too).
_SCHEMA_LOCK = migrations.SCHEMA_LOCK


class Database:
    """An open pool, the procrastinate App on it, and the repository on both."""

    def __init__(self, pool: AsyncConnectionPool[Any], app: procrastinate.App) -> None:
        self.pool = pool
        self.app = app
        self.repo = PostgresRepository(pool, app)


def make_app(conninfo: str) -> procrastinate.App:
    """A procrastinate App on `conninfo` with picserve's job registered."""
    return jobs.register(procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo)))


@asynccontextmanager
async def open_database(
    conninfo: str, max_size: int = 10, idle_transaction_timeout: float = 60.0
) -> AsyncIterator[Database]:
    """Open the pool (at most `max_size` connections) and the App, creating both schemas when missing.

    A session left idle inside a transaction for `idle_transaction_timeout` seconds is ended by the
    server: a process frozen mid-transaction (SIGSTOP, a long GC pause) would otherwise hold its row
    locks, and every cancel or sweep touching those rows would wait for it. Workers pass twice their
    stalled-worker timeout, so only a worker already given up on loses its session.
    """
    # No autocommit here: procrastinate's LISTEN connection adds its own, and a pooled
    # connection commits when its `async with` block ends anyway.
    options = f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}"
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo, min_size=1, max_size=max_size, open=False, kwargs={"options": options}
    )
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:  # psycopg_pool.PoolTimeout and connection errors
        raise errors.ServerBusy(f"database unreachable: {exc}") from exc
    app = make_app(conninfo)
    try:
        await app.open_async(pool)
        db = Database(pool, app)
        await _ensure_schema(db)
        yield db
    finally:
        await app.close_async()
        await pool.close()


async def _ensure_schema(db: Database) -> None:
    async with db.pool.connection() as conn:
        await upgrade_schema(conn)


async def upgrade_schema(conn: AsyncConnection[Any]) -> list[str]:
    """procrastinate's schema when missing, then picserve's pending migrations, in one transaction.

    Under the schema lock, so whichever process starts first does it; returns the migrations applied.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cur.fetchone()
        if not (row and row[0]):
            log.info("creating the procrastinate schema")
            # Sent without parameters, so its `%` signs need no escaping.
            await conn.execute(procrastinate.schema.SchemaManager.get_schema())
        return await migrations.upgrade(conn)

"""The PostgreSQL side: the pool, the procrastinate App on it, and the repository, opened together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from picserve import errors
from picserve.tasks import jobs
from picserve.tasks.postgres import PostgresRepository

__all__ = ["Database", "make_app", "open_database"]

log = logging.getLogger(__name__)

# Serialises schema creation when the API and several workers start at once.
_SCHEMA_LOCK = 0x70696373  # "pics"


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
async def open_database(conninfo: str, max_size: int = 10) -> AsyncIterator[Database]:
    """Open the pool (at most `max_size` connections) and the App, creating both schemas when missing."""
    # No autocommit here: procrastinate's LISTEN connection adds its own, and a pooled
    # connection commits when its `async with` block ends anyway.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False)
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
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cur.fetchone()
        if not (row and row[0]):
            log.info("creating the procrastinate schema")
            # Sent without parameters, so its `%` signs need no escaping.
            await conn.execute(db.app.schema_manager.get_schema())
        await db.repo.apply_schema(conn)

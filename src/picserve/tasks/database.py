"""The PostgreSQL side: the pool, the procrastinate App on it, and the repository, opened together.

**Database outages.** PostgreSQL may go away (stopped, restarted, crashed, failed over) under running
API processes and workers; none of them is restarted for it, and no accepted task is lost:

- *API.* A request waits at most `wait_timeout` seconds (PICSERVE_DB_WAIT_TIMEOUT) for a pooled
  connection, and a connection attempt at most `CONNECT_TIMEOUT`; the repository turns every
  connection failure into ServerBusy, so each request is answered RetCode 290 within seconds, never
  500 and never a hang. The pool checks each connection before handing it out (a connection the
  restart broke is dropped, not used), and keeps trying to replace a lost connection by itself for
  `wait_timeout` seconds; after that a waiting request starts a fresh attempt at once, so the pool is
  whole again as soon as the server answers. The background loops (stalled-worker sweep, retention)
  log the outage and carry on.
- *Worker.* procrastinate 3.10 does not survive an outage by itself: a failed `fetch_job` ends the
  worker's loop, a failed heartbeat or LISTEN reconnect ends its side task and, with it, the worker
  (which aborts its running job on the way out), and a failed `finish_job` is lost in the job's task.
  So a worker's App runs on `ResilientConnector` (worker/connector.py), which retries procrastinate's
  own statements (fetch, heartbeat, abort polling, finishing a job) and LISTEN's reconnection until the
  database answers; picserve's statements are retried by `resilience.Retry` (taking a task, writing
  its outcome). The worker
  just waits: its running generation goes on, its outcome is written when the database is back, and it
  takes the next job. `process.work` restarts procrastinate's loop in the process if it ends anyway.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import procrastinate
import procrastinate.exceptions
import procrastinate.schema
import procrastinate.sql
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from picserve import errors
from picserve.config import Settings
from picserve.keycipher import KeyCipher
from picserve.tasks import migrations
from picserve.tasks.postgres import PostgresRepository

__all__ = [
    "CONNECT_TIMEOUT",
    "Database",
    "make_app",
    "open_database",
    "upgrade_schema",
]

log = logging.getLogger(__name__)

# Serialises schema changes when the API and several workers start at once (migrations take it too).
_SCHEMA_LOCK = migrations.SCHEMA_LOCK

#: seconds one connection attempt may take (libpq's connect_timeout): a server that does not answer
#: at all (a network cut rather than a refused port) costs this much, never a hang
CONNECT_TIMEOUT = 5
#: TCP keepalives: a peer gone silent under an open connection is noticed in about a minute
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Database:
    """An open pool, the procrastinate App on it, and the repository on both."""

    def __init__(self, pool: AsyncConnectionPool[Any], app: procrastinate.App, cipher: KeyCipher | None = None) -> None:
        self.pool = pool
        self.app = app
        self.repo = PostgresRepository(pool, app, cipher)


def make_app(conninfo: str, connector: procrastinate.PsycopgConnector | None = None) -> procrastinate.App:
    """A procrastinate App on `conninfo` (or on `connector`). Jobs are deferred by name (tasks/queue.py);
    a worker registers the function that runs them (worker/jobs.py `register`)."""
    return procrastinate.App(connector=connector or procrastinate.PsycopgConnector(conninfo=conninfo))


#: a connection back in the pool for less than this many seconds is handed out again unchecked: under
#: load that saves a round trip per request, and a server restart (which takes longer) is still caught
#: by the check on every connection that waited through it
CHECK_AFTER_IDLE = 2.0
_returned_at: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


async def _autocommit(conn: AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


async def _returned(conn: AsyncConnection[Any]) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_when_idle(conn: AsyncConnection[Any]) -> None:
    if time.monotonic() - _returned_at.get(conn, -math.inf) >= CHECK_AFTER_IDLE:
        await AsyncConnectionPool.check_connection(conn)


@asynccontextmanager
async def open_database(
    conninfo: str,
    max_size: int = 10,
    idle_transaction_timeout: float = 60.0,
    cipher: KeyCipher | None = None,
    wait_timeout: float = Settings.db_wait_timeout,
) -> AsyncIterator[Database]:
    """Open the pool (at most `max_size` connections) and the App, creating both schemas when missing.

    A session left idle inside a transaction for `idle_transaction_timeout` seconds is ended by the
    server: a process frozen mid-transaction (SIGSTOP, a long GC pause) would otherwise hold its row
    locks, and every cancel or sweep touching those rows would wait for it. Workers pass twice their
    stalled-worker timeout, so only a worker already given up on loses its session.

    With `cipher` (the server secret, keycipher.py), the repository reads and writes keys, and any
    private key still stored in plaintext (a database from before sealing) is sealed now; without it
    (GPU workers), keys cannot be read.

    A statement waits at most `wait_timeout` seconds for a connection (then PoolTimeout, which the
    repository answers ServerBusy); see the module's docstring for what happens while the database is
    away.
    """
    # Autocommit: a statement outside `conn.transaction()` is its own transaction, so a one-statement
    # read or write costs one round trip, not three (BEGIN, the statement, COMMIT); every multi-statement
    # change is an explicit `conn.transaction()`.
    options = f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}"
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"options": options, "connect_timeout": CONNECT_TIMEOUT, **_KEEPALIVES},
        # (not a connect argument: procrastinate's LISTEN connection passes its own autocommit=True)
        configure=_autocommit,
        timeout=wait_timeout,
        # a connection idle for a while is checked (one round trip) before it is handed out: one broken
        # by a restart of the server is replaced instead of failing the statement it was given for
        check=_check_when_idle,
        reset=_returned,
        # a lost connection is retried by the pool for as long as a request waits; after that, a
        # waiting request starts a fresh attempt at once (the pool's own retries back off to minutes)
        reconnect_timeout=max(wait_timeout, 1.0),
    )
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:  # psycopg_pool.PoolTimeout and connection errors
        raise errors.DatabaseUnreachable(f"database unreachable: {exc}") from exc
    app = make_app(conninfo)
    try:
        await app.open_async(pool)
        db = Database(pool, app, cipher)
        await _ensure_schema(db)
        if cipher is not None and (sealed := await db.repo.seal_keys()):
            log.info("sealed %d private keys stored in plaintext", sealed)
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

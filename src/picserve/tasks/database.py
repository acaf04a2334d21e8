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
  So a worker's App runs on `ResilientConnector`, which retries procrastinate's own statements (fetch,
  heartbeat, abort polling, finishing a job) and LISTEN's reconnection until the database answers;
  picserve's statements are retried by `jobs.Retry` (taking a task, writing its outcome). The worker
  just waits: its running generation goes on, its outcome is written when the database is back, and it
  takes the next job. `worker.work` restarts procrastinate's loop in the process if it ends anyway.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, LiteralString

import procrastinate
import procrastinate.exceptions
import procrastinate.schema
import procrastinate.sql
import psycopg
import psycopg_pool
from procrastinate.connector import Notify
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from picserve import errors
from picserve.config import Settings
from picserve.keycipher import KeyCipher
from picserve.tasks import jobs, migrations, routing
from picserve.tasks.postgres import PostgresRepository

__all__ = [
    "CONNECT_TIMEOUT",
    "Database",
    "ResilientConnector",
    "make_app",
    "maybe_applied",
    "open_database",
    "unreachable",
    "upgrade_schema",
    "worker_retry",
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
    """A procrastinate App on `conninfo` (or on `connector`) with picserve's job registered."""
    return jobs.register(procrastinate.App(connector=connector or procrastinate.PsycopgConnector(conninfo=conninfo)))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (ServerBusy ← ConnectorException ← psycopg's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached — the server down, starting or shutting
    down, the connection lost, no pooled connection in time — rather than a statement refused. The
    repository's ServerBusy and procrastinate's ConnectorException count by what they were raised from.
    A pool being closed (this process shutting down) does not count."""
    for cause in _causes(exc):
        if isinstance(cause, psycopg_pool.PoolClosed):
            return False
        if isinstance(cause, psycopg.OperationalError):
            return True
    return False


def maybe_applied(exc: BaseException) -> bool:
    """Whether a statement that failed with `exc` may have been applied all the same: its connection
    broke after it was sent. Not when no connection was had at all (the pool's timeout)."""
    return unreachable(exc) and not any(isinstance(cause, psycopg_pool.PoolTimeout) for cause in _causes(exc))


def worker_retry() -> jobs.Retry:
    """The `jobs.Retry` of a worker: PostgreSQL's errors told apart."""
    return jobs.Retry(transient=unreachable, maybe_applied=maybe_applied)


_QUERY_NAMES = {text: name for name, text in procrastinate.sql.queries.items()}
_FETCH_JOB = procrastinate.sql.queries["fetch_job"]
#: a job this worker holds in `doing` (what a fetch whose reply was lost took); the columns of fetch_job
_HELD_JOB: LiteralString = (
    "SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts, "
    "worker_id FROM procrastinate_jobs WHERE worker_id = %(worker_id)s AND status = 'doing' ORDER BY id LIMIT 1"
)


class ResilientConnector(procrastinate.PsycopgConnector):
    """A worker's procrastinate connector: its statements wait out a database outage (see the module's
    docstring for why), retried by `retry` until the database answers or the worker is stopping.

    Only the statements run on a pooled connection are retried; one run on a connection the caller
    holds (a job deferred inside the caller's transaction) fails at once, for the caller to handle.
    LISTEN reconnects the same way; the notifications it misses meanwhile are covered by the worker's
    polling. A fetch whose connection broke may have taken a job without its reply coming back: the
    worker (one job at a time, so it fetches only while it holds none) then takes the job it holds
    under its id instead of a new one, so no job is left `doing` behind a live worker.

    With `route`, procrastinate's fetch is replaced by picserve's (routing.py: key priority, fair
    share, model affinity), with the same retries and the same taking back of a lost fetch's job.
    """

    def __init__(self, retry: jobs.Retry, route: routing.Routing | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry = retry
        self.route = route

    async def execute_query_async(self, query: LiteralString, **arguments: Any) -> None:
        parent = super().execute_query_async
        await self.retry.run(_what(query), lambda: parent(query, **arguments), patient=_patient(query))

    async def execute_query_one_async(self, query: LiteralString, **arguments: Any) -> dict[str, Any]:
        parent = super().execute_query_one_async
        if query == _FETCH_JOB:
            return await self._fetch_job(parent, arguments)
        return await self.retry.run(_what(query), lambda: parent(query, **arguments), patient=_patient(query))

    async def execute_query_all_async(self, query: LiteralString, **arguments: Any) -> list[dict[str, Any]]:
        parent = super().execute_query_all_async
        return await self.retry.run(_what(query), lambda: parent(query, **arguments), patient=_patient(query))

    async def _fetch_job(
        self, parent: Callable[..., Awaitable[dict[str, Any]]], arguments: dict[str, Any]
    ) -> dict[str, Any]:
        lost = False

        async def attempt() -> dict[str, Any]:
            nonlocal lost
            if lost:
                try:
                    held = await parent(_HELD_JOB, worker_id=arguments["worker_id"])
                    log.warning("took back job %s, fetched before the connection broke", held["id"])
                    return held
                except procrastinate.exceptions.NoResult:
                    lost = False
            try:
                if self.route is not None:
                    return await parent(routing.FETCH_JOB, **arguments, **self.route.arguments())
                return await parent(_FETCH_JOB, **arguments)
            except Exception as exc:
                lost = lost or maybe_applied(exc)
                raise

        return await self.retry.run("procrastinate fetch_job", attempt, patient=False)

    async def listen_notify(self, on_notification: Notify, channels: Iterable[str]) -> None:
        parent = super().listen_notify
        names = list(channels)
        # procrastinate's loop reconnects after a lost connection, but fails when the server refuses
        await self.retry.run(
            "procrastinate LISTEN", lambda: parent(on_notification=on_notification, channels=names), patient=False
        )


def _what(query: str) -> str:
    return f"procrastinate {_QUERY_NAMES.get(query, 'query')}"


def _patient(query: str) -> bool:
    """Whether a stopping worker still retries `query`: only the end of a job it ran is worth it (the
    rest — fetching, heartbeats, unregistering — a stopping worker can do without)."""
    return _QUERY_NAMES.get(query) in ("finish_job", "retry_job")


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
    # No autocommit here: procrastinate's LISTEN connection adds its own, and a pooled
    # connection commits when its `async with` block ends anyway.
    options = f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}"
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"options": options, "connect_timeout": CONNECT_TIMEOUT, **_KEEPALIVES},
        timeout=wait_timeout,
        # a connection is checked (one round trip) before it is handed out: one broken by a restart
        # of the server is replaced instead of failing the statement it was given for
        check=AsyncConnectionPool.check_connection,
        # a lost connection is retried by the pool for as long as a request waits; after that, a
        # waiting request starts a fresh attempt at once (the pool's own retries back off to minutes)
        reconnect_timeout=max(wait_timeout, 1.0),
    )
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:  # psycopg_pool.PoolTimeout and connection errors
        raise errors.ServerBusy(f"database unreachable: {exc}") from exc
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

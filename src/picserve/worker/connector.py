"""`ResilientConnector`: a worker's procrastinate connector, which waits out database outages and
replaces procrastinate's fetch by picserve's routed one (routing.py).

Why a worker needs it, and what the API does instead, is in tasks/database.py's docstring. The fetch
is recognised by procrastinate's own `fetch_job` statement (tests/unit/test_fetch_override.py pins
it, so a procrastinate upgrade that changes it fails the suite instead of silently ending routing).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, LiteralString

import procrastinate
import procrastinate.exceptions
import procrastinate.sql
from procrastinate.connector import Notify

from picserve.resilience import Retry, maybe_applied
from picserve.worker import routing

__all__ = ["PROCRASTINATE_FETCH_JOB", "ResilientConnector"]

log = logging.getLogger(__name__)

_QUERY_NAMES = {text: name for name, text in procrastinate.sql.queries.items()}
PROCRASTINATE_FETCH_JOB = procrastinate.sql.queries["fetch_job"]
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

    def __init__(self, retry: Retry, route: routing.Routing | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry = retry
        self.route = route

    async def execute_query_async(self, query: LiteralString, **arguments: Any) -> None:
        parent = super().execute_query_async
        await self.retry.run(_what(query), lambda: parent(query, **arguments), patient=_patient(query))

    async def execute_query_one_async(self, query: LiteralString, **arguments: Any) -> dict[str, Any]:
        parent = super().execute_query_one_async
        if query == PROCRASTINATE_FETCH_JOB:
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
                return await parent(PROCRASTINATE_FETCH_JOB, **arguments)
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

"""The workers' routed fetch replaces procrastinate's by recognising its `fetch_job` statement
(worker/connector.py's ResilientConnector, worker/routing.py). Should a procrastinate upgrade change that
statement or the way its JobManager sends it, routing would silently stop: these tests fail instead."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import procrastinate
import procrastinate.sql
import procrastinate.testing
from procrastinate import manager

from picserve.worker import connector, routing

#: sha256 of procrastinate 3.10's `fetch_job` statement, which picserve_fetch_job_v1 (migration 0004)
#: mirrors: its arguments, its locking, the columns it returns
PINNED_FETCH_JOB = "cdfaf364035990e2e3b779d56c1ea0dcf1bffdea9c738dad3f75deb363381b40"


def test_procrastinates_fetch_job_statement_is_the_one_routing_was_written_against():
    text = procrastinate.sql.queries["fetch_job"]
    assert hashlib.sha256(text.encode()).hexdigest() == PINNED_FETCH_JOB, (
        "procrastinate's fetch_job statement changed (an upgrade?): review picserve_fetch_job_v1 "
        "(tasks/sql/migrations/0004_workers_and_routing.sql, a new migration for any change) and "
        f"tasks/routing.py against it, then pin the new hash. The statement now:\n{text}"
    )


class _Recorder(procrastinate.testing.InMemoryConnector):
    """Records the statement and arguments of every single-row query, and finds no job."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def execute_query_one_async(self, query: str, **arguments: Any) -> dict[str, Any]:  # type: ignore[override]
        self.sent.append((query, arguments))
        return {"id": None}


def test_the_job_manager_fetches_with_the_statement_the_worker_connector_replaces():
    recorder = _Recorder()
    assert asyncio.run(manager.JobManager(recorder).fetch_job(queues=["generation"], worker_id=7)) is None
    ((query, arguments),) = recorder.sent
    assert query == connector.PROCRASTINATE_FETCH_JOB
    assert arguments == {"queues": ["generation"], "worker_id": 7}
    # picserve's statement takes procrastinate's arguments and routing's own
    for name in (*arguments, *routing.Routing("w", 1.0, 30.0).arguments()):
        assert f"%({name})s" in routing.FETCH_JOB, name

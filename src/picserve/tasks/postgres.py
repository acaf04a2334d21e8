"""`PostgresRepository`: the `TaskRepository` on PostgreSQL, with procrastinate as the queue.

Every state change is one guarded SQL statement. A task's row and its procrastinate job are written
in one transaction, so an accepted TaskUID is never lost and never queued twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import procrastinate
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from picserve import domain, errors
from picserve.tasks import jobs

__all__ = ["PostgresRepository"]

_OPEN = ["Queuing", "Running"]
_CANCELED_MESSAGE = "Task was cancelled"
#: the guard of every write a worker makes: the task is Running under this very run
_RUN = "task_uid = %s AND status = 'Running' AND worker = %s AND attempt = %s"


def _of(run: domain.Run) -> tuple[str, str, int]:
    """The parameters of `_RUN`."""
    return (run.task_uid, run.worker, run.attempt)


Row = dict[str, Any]


class PostgresRepository:
    """Keys and tasks on a psycopg pool; jobs on the procrastinate `app` that shares it."""

    def __init__(self, pool: AsyncConnectionPool[Any], app: procrastinate.App) -> None:
        self.pool = pool
        self.app = app

    async def _one(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            row: Row | None = await cur.fetchone()
            return row

    async def _all(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            rows: list[Row] = await cur.fetchall()
            return rows

    # --- keys -------------------------------------------------------------------------------
    async def create_key(self, name: str, credits: int) -> domain.Account:
        row = await self._one(
            "INSERT INTO picserve_keys (public_key, private_key, name, total_credits) "
            "VALUES (%s, %s, %s, %s) RETURNING *",
            (secrets.token_hex(16), secrets.token_hex(24), name, credits),
        )
        assert row is not None  # INSERT … RETURNING always returns the row
        return _account(row)

    async def list_keys(self) -> list[domain.Account]:
        return [_account(r) for r in await self._all("SELECT * FROM picserve_keys ORDER BY created_at")]

    async def get_account(self, public_key: str) -> domain.Account | None:
        row = await self._one("SELECT * FROM picserve_keys WHERE public_key = %s", (public_key,))
        return _account(row) if row else None

    async def revoke_key(self, public_key: str) -> bool:
        row = await self._one(
            "UPDATE picserve_keys SET revoked = true WHERE public_key = %s RETURNING 1", (public_key,)
        )
        return row is not None

    async def add_credits(self, public_key: str, credits: int) -> bool:
        row = await self._one(
            "UPDATE picserve_keys SET total_credits = total_credits + %s WHERE public_key = %s RETURNING 1",
            (credits, public_key),
        )
        return row is not None

    # --- the API side ---------------------------------------------------------------------------
    async def create_task(
        self, task_uid: str, public_key: str, action: str, spec: domain.GenerationSpec, cost: int
    ) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            available = await _lock_balance(conn, public_key)
            if available < cost:
                raise errors.InsufficientCredits(
                    f"this request costs {cost} credits and {max(available, 0)} are available"
                )
            await conn.execute(
                "INSERT INTO picserve_tasks (task_uid, public_key, action, status, spec, cost) "
                "VALUES (%s, %s, %s, 'Queuing', %s, %s)",
                (task_uid, public_key, action, Jsonb(spec.to_dict()), cost),
            )
            await self._defer(conn, task_uid)

    async def _defer(self, conn: AsyncConnection[Any], task_uid: str) -> None:
        """Queue the task's job in the caller's transaction and point the task at it."""
        job = self.app.tasks[jobs.TASK_NAME].configure(connection=conn)
        job_id = await job.defer_async(task_uid=task_uid)
        await conn.execute("UPDATE picserve_tasks SET job_id = %s WHERE task_uid = %s", (job_id, task_uid))

    async def queued_count(self) -> int:
        row = await self._one("SELECT count(*) AS n FROM picserve_tasks WHERE status = 'Queuing'")
        return int(row["n"]) if row else 0

    async def get_many(self, task_uids: Sequence[str], public_key: str) -> list[domain.TaskRecord]:
        rows = await self._all(
            "SELECT * FROM picserve_tasks WHERE task_uid = ANY(%s) AND public_key = %s",
            (list(task_uids), public_key),
        )
        return [domain.TaskRecord.from_row(r) for r in rows]

    async def open_tasks(self, public_key: str) -> list[str]:
        rows = await self._all(
            "SELECT task_uid FROM picserve_tasks WHERE public_key = %s AND status = ANY(%s) ORDER BY created_at",
            (public_key, _OPEN),
        )
        return [r["task_uid"] for r in rows]

    async def request_cancel(self, task_uid: str) -> None:
        # A queued task is cancelled by its row: a worker that fetches its job finds it no longer queued.
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Canceled', error_code = 510, error_message = %s, "
            "finished_at = now() WHERE task_uid = %s AND status = 'Queuing' RETURNING job_id",
            (_CANCELED_MESSAGE, task_uid),
        )
        if row is not None:
            if row["job_id"] is not None:
                await self.app.job_manager.cancel_job_by_id_async(row["job_id"], abort=False)
            return
        # Not queued (any more): if a worker has it, ask its job to abort. Read after the update, so a
        # task taken between the two statements is seen Running and still stops.
        row = await self._one(
            "SELECT job_id FROM picserve_tasks WHERE task_uid = %s AND status = 'Running'", (task_uid,)
        )
        if row is not None and row["job_id"] is not None:
            await self.app.job_manager.cancel_job_by_id_async(row["job_id"], abort=True)

    async def delete_ended_before(self, cutoff: datetime) -> list[domain.TaskRecord]:
        rows = await self._all(
            "DELETE FROM picserve_tasks WHERE finished_at < %s AND status <> ALL(%s) RETURNING *", (cutoff, _OPEN)
        )
        return [domain.TaskRecord.from_row(row) for row in rows]

    # --- the worker side (fenced transitions) -----------------------------------------------------
    async def mark_running(self, task_uid: str, worker: str) -> tuple[domain.Run, domain.GenerationSpec] | None:
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Running', worker = %s, started_at = now(), progress = 0, "
            "attempt = attempt + 1 WHERE task_uid = %s AND status = 'Queuing' RETURNING spec, attempt",
            (worker, task_uid),
        )
        if row is None:
            return None
        return domain.Run(task_uid, worker, row["attempt"]), domain.GenerationSpec.from_json(row["spec"])

    async def record_progress(self, run: domain.Run, progress: float) -> bool:
        row = await self._one(
            f"UPDATE picserve_tasks SET progress = %s WHERE {_RUN} RETURNING 1", (progress, *_of(run))
        )
        return row is not None

    async def finish_task(self, run: domain.Run, result_keys: Sequence[str], seeds: Sequence[int]) -> bool:
        row = await self._one(
            "WITH done AS (UPDATE picserve_tasks SET status = 'Finished', progress = 1, result_keys = %s, "
            f"  seeds = %s, finished_at = now() WHERE {_RUN} RETURNING public_key, cost) "
            "UPDATE picserve_keys k SET used_credits = k.used_credits + done.cost FROM done "
            "WHERE k.public_key = done.public_key RETURNING 1",
            (list(result_keys), list(seeds), *_of(run)),
        )
        return row is not None

    async def fail_task(self, run: domain.Run, code: int, message: str) -> bool:
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Error', error_code = %s, error_message = %s, finished_at = now() "
            f"WHERE {_RUN} RETURNING 1",
            (code, message, *_of(run)),
        )
        return row is not None

    async def cancel_run(self, run: domain.Run) -> bool:
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Canceled', error_code = 510, error_message = %s, "
            f"finished_at = now() WHERE {_RUN} RETURNING 1",
            (_CANCELED_MESSAGE, *_of(run)),
        )
        return row is not None

    async def requeue_run(self, run: domain.Run) -> bool:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"UPDATE picserve_tasks SET status = 'Queuing', worker = NULL, progress = 0 WHERE {_RUN} RETURNING 1",
                _of(run),
            )
            if await cur.fetchone() is None:
                return False
            await self._defer(conn, run.task_uid)
            return True

    # --- recovery (PostgreSQL only: procrastinate's stalled jobs) ---------------------------------
    async def requeue_job(self, job_id: int) -> str | None:
        """Running → Queuing for the task of a job whose worker died, so the retried job can take it."""
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Queuing', worker = NULL, progress = 0 "
            "WHERE job_id = %s AND status = 'Running' RETURNING task_uid",
            (job_id,),
        )
        return row["task_uid"] if row else None


async def _lock_balance(conn: AsyncConnection[Any], public_key: str) -> int:
    """Credits still available to `public_key`, counting open tasks as spent; locks the key row first.

    Two statements on purpose: a statement reads the snapshot it started with, so a balance summed in
    the locking statement itself would miss the tasks that the transaction it waited for inserted, and
    two concurrent submits could spend the same credits (the contract suite's concurrency test).
    """
    await conn.execute("SELECT 1 FROM picserve_keys WHERE public_key = %s FOR UPDATE", (public_key,))
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT k.total_credits - k.used_credits - COALESCE("
        "  (SELECT sum(cost) FROM picserve_tasks t WHERE t.public_key = k.public_key"
        "   AND t.status = ANY(%s)), 0) AS available "
        "FROM picserve_keys k WHERE k.public_key = %s",
        (_OPEN, public_key),
    )
    row: DictRow | None = await cur.fetchone()
    return int(row["available"]) if row else 0


def _account(row: Row) -> domain.Account:
    return domain.Account(
        public_key=row["public_key"],
        private_key=row["private_key"],
        name=row["name"],
        total_credits=row["total_credits"],
        used_credits=row["used_credits"],
        expire_at=row["expire_at"],
        revoked=row["revoked"],
    )

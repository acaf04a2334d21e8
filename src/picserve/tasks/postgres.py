"""`PostgresRepository`: the `TaskRepository` on PostgreSQL, with procrastinate as the queue.

Every state change is one guarded SQL statement. A task's row and its procrastinate job are written
in one transaction, so an accepted TaskUID is never lost and never queued twice.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import procrastinate
import procrastinate.exceptions
import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from picserve import domain, errors
from picserve.config import Settings
from picserve.keycipher import KeyCipher
from picserve.tasks import repository, workers
from picserve.tasks.queue import QUEUE, TASK_NAME

__all__ = ["PostgresRepository"]

_OPEN = ["Queuing", "Running"]
_CANCELED_MESSAGE = "Task was cancelled"
#: the guard of every write a worker makes: the task is Running under this very run
_RUN = "task_uid = %s AND status = 'Running' AND worker = %s AND attempt = %s"


#: what an ending transition returns for its run's record, and the record written from it (its CTE
#: `done`; parameters: the end's cause and detail)
_ENDED = "task_uid, attempt, worker, started_at"
_RECORD_RUN = (
    "INSERT INTO picserve_runs (task_uid, attempt, worker, started_at, ended_as, detail) "
    "SELECT task_uid, attempt, worker, started_at, %s, %s FROM done"
)
#: what handing a task back reads of it (its run's record, the spec for the digest)
_HANDED_BACK = "task_uid, attempt, worker, started_at, spec_kind, spec_version, spec"


#: what a poll reads of a task (domain.TaskRecord.from_row's columns but its webhook, routing, attempt);
#: the spec as JSON text, which domain.spec_from_json decodes once for all the polls of a task
_DETAIL_COLUMNS = (
    "t.task_uid, t.public_key, t.action, t.status, t.spec_kind, t.spec_version, t.spec::text AS spec, t.cost, "
    "t.progress, t.result_keys, t.seeds, t.result_texts, t.error_code, t.error_message, t.worker, t.created_at, "
    "t.started_at, t.finished_at, t.preview"
)


def _of(run: domain.Run) -> tuple[str, str, int]:
    """The parameters of `_RUN`."""
    return (run.task_uid, run.worker, run.attempt)


Row = dict[str, Any]


def _digest(task: Row) -> str:
    """`domain.spec_digest` of a task row's spec (its `_HANDED_BACK` columns)."""
    return domain.spec_digest(domain.spec_from_json(task["spec_kind"], task["spec_version"], task["spec"]))


#: what the database being unreachable looks like: no connection within the pool's timeout, a
#: connection lost mid-statement, the server shutting down (procrastinate wraps the same)
_UNREACHABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout, procrastinate.exceptions.ConnectorException)


def _busy(exc: BaseException) -> errors.DatabaseUnreachable:
    return errors.DatabaseUnreachable(f"database unreachable ({type(exc).__name__}); retry later")


class PostgresRepository:
    """Keys and tasks on a psycopg pool; jobs on the procrastinate `app` that shares it.

    Private keys are stored sealed by `cipher` (keycipher.py). A repository opened without one (a GPU
    worker, which never reads keys) refuses to create or read them.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], app: procrastinate.App, cipher: KeyCipher | None = None) -> None:
        self.pool = pool
        self.app = app
        self.cipher = cipher

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; the database being unreachable (no connection within the pool's
        timeout, a connection lost mid-statement, the server shutting down) becomes ServerBusy, which
        callers answer with RetCode 290 and workers retry."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except _UNREACHABLE as exc:
            raise _busy(exc) from exc

    async def _one(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Row | None:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            row: Row | None = await cur.fetchone()
            return row

    async def _all(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            rows: list[Row] = await cur.fetchall()
            return rows

    # --- keys -------------------------------------------------------------------------------
    def _cipher(self) -> KeyCipher:
        if self.cipher is None:
            raise errors.PicserveError("this process was opened without the server secret: it cannot read keys")
        return self.cipher

    def _account(self, row: Row) -> domain.Account:
        return domain.Account(
            public_key=row["public_key"],
            private_key=self._cipher().open(row["private_key"]),
            name=row["name"],
            total_credits=row["total_credits"],
            used_credits=row["used_credits"],
            expire_at=row["expire_at"],
            revoked=row["revoked"],
            max_open_tasks=row["max_open_tasks"],
            max_requests_per_minute=row["max_requests_per_minute"],
            priority=row["priority"],
            weight=row["weight"],
            webhook_url=row.get("webhook_url"),
            admin=row.get("admin", False),
        )

    async def create_key(
        self,
        name: str,
        credits: int,
        max_open_tasks: int | None = None,
        max_requests_per_minute: int | None = None,
        admin: bool = False,
    ) -> domain.Account:
        private_key = secrets.token_hex(24)
        row = await self._one(
            "INSERT INTO picserve_keys (public_key, private_key, name, total_credits, max_open_tasks, "
            "max_requests_per_minute, admin) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (
                secrets.token_hex(16),
                self._cipher().seal(private_key),
                name,
                credits,
                max_open_tasks,
                max_requests_per_minute,
                admin,
            ),
        )
        assert row is not None  # INSERT … RETURNING always returns the row
        return self._account(row)

    async def list_keys(self) -> list[domain.Account]:
        return [self._account(r) for r in await self._all("SELECT * FROM picserve_keys ORDER BY created_at")]

    async def get_account(self, public_key: str) -> domain.Account | None:
        row = await self._one("SELECT * FROM picserve_keys WHERE public_key = %s", (public_key,))
        return self._account(row) if row else None

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

    async def set_limits(
        self, public_key: str, max_open_tasks: int | None, max_requests_per_minute: int | None
    ) -> bool:
        row = await self._one(
            "UPDATE picserve_keys SET max_open_tasks = %s, max_requests_per_minute = %s WHERE public_key = %s "
            "RETURNING 1",
            (max_open_tasks, max_requests_per_minute, public_key),
        )
        return row is not None

    async def set_scheduling(self, public_key: str, priority: int, weight: float) -> bool:
        repository.check_weight(weight)
        row = await self._one(
            "UPDATE picserve_keys SET priority = %s, weight = %s WHERE public_key = %s RETURNING 1",
            (priority, weight, public_key),
        )
        return row is not None

    async def set_webhook(self, public_key: str, url: str | None) -> bool:
        row = await self._one(
            "UPDATE picserve_keys SET webhook_url = %s WHERE public_key = %s RETURNING 1", (url, public_key)
        )
        return row is not None

    async def set_admin(self, public_key: str, admin: bool) -> bool:
        row = await self._one(
            "UPDATE picserve_keys SET admin = %s WHERE public_key = %s RETURNING 1", (admin, public_key)
        )
        return row is not None

    async def take_request(self, public_key: str, per_minute: int) -> float:
        # GCRA in one guarded upsert: the request passes when the key's next arrival time, pushed by
        # one interval, is at most a minute ahead of now. Refused, nothing is written.
        params = {"key": public_key, "interval": 60.0 / per_minute}
        row = await self._one(
            "INSERT INTO picserve_rate_limits AS r (public_key, tat) "
            "VALUES (%(key)s, now() + make_interval(secs => %(interval)s)) "
            "ON CONFLICT (public_key) DO UPDATE SET tat = greatest(r.tat, now()) + make_interval(secs => %(interval)s) "
            "WHERE greatest(r.tat, now()) + make_interval(secs => %(interval)s) <= now() + interval '60 seconds' "
            "RETURNING 1",
            params,
        )
        if row is not None:
            return 0.0
        row = await self._one(
            "SELECT extract(epoch FROM greatest(tat, now()) + make_interval(secs => %(interval)s) "
            "  - interval '60 seconds' - now())::float AS wait FROM picserve_rate_limits WHERE public_key = %(key)s",
            params,
        )
        return max(float(row["wait"]), 0.001) if row else 0.0

    async def seal_keys(self) -> int:
        """Seal every private key still stored in plaintext (a database from before sealing); the count."""
        cipher = self._cipher()
        sealed = 0
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT public_key, private_key FROM picserve_keys WHERE private_key NOT LIKE 'fernet:%%' FOR UPDATE"
            )
            for row in await cur.fetchall():
                await conn.execute(
                    "UPDATE picserve_keys SET private_key = %s WHERE public_key = %s",
                    (cipher.seal(row["private_key"]), row["public_key"]),
                )
                sealed += 1
        return sealed

    async def reseal_keys(self, new: KeyCipher) -> int:
        """Re-seal every private key under `new`'s newest secret (`new` must open them all); the count."""
        resealed = 0
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT public_key, private_key FROM picserve_keys FOR UPDATE"
            )
            for row in await cur.fetchall():
                await conn.execute(
                    "UPDATE picserve_keys SET private_key = %s WHERE public_key = %s",
                    (new.reseal(row["private_key"]), row["public_key"]),
                )
                resealed += 1
        return resealed

    # --- the API side ---------------------------------------------------------------------------
    async def find_request(self, public_key: str, request: domain.RequestId) -> str | None:
        async with self._connection() as conn:
            return await _find_request(conn, public_key, request)

    async def before_submit(
        self, public_key: str, request: domain.RequestId | None, live_after: float | None
    ) -> tuple[str | None, list[tuple[str, int]]]:
        if request is None and live_after is None:
            return None, []
        row = await self._one(
            "SELECT r.fingerprint, r.task_uid, (SELECT coalesce(json_agg(json_build_array(w.device, w.memory_total)), "
            "    '[]') FROM picserve_workers w WHERE %(live)s::float8 IS NOT NULL AND w.memory_total IS NOT NULL "
            "    AND w.last_heartbeat > now() - make_interval(secs => %(live)s::float8)) AS workers "
            "FROM (SELECT 1) AS one LEFT JOIN picserve_requests r ON r.public_key = %(key)s "
            "  AND r.request_uuid = %(request)s::text AND r.created_at > now() - make_interval(secs => %(window)s)",
            {
                "key": public_key,
                "request": request.request_uuid if request else None,
                "window": request.window if request else 0.0,
                "live": live_after,
            },
        )
        assert row is not None  # one row, whatever matched
        workers = [(str(device), int(memory)) for device, memory in row["workers"]]
        earlier: str | None = row["task_uid"]
        if earlier is not None and request is not None and row["fingerprint"] != request.fingerprint:
            raise repository.idempotency_conflict(request.request_uuid, earlier)
        return earlier, workers

    async def create_task(
        self,
        task_uid: str,
        public_key: str,
        action: str,
        spec: domain.ActionSpec,
        cost: int,
        *,
        max_open_tasks: int = 0,
        max_queued: int | None = None,
        request: domain.RequestId | None = None,
        webhook: domain.Webhook | None = None,
    ) -> str:
        # One statement, one round trip (migration 0011): the queue bound, the key's lock, its open
        # tasks and credits, the idempotency check, the job and the task with its request. The key's
        # row is locked only while the server runs it.
        needs = spec.needs()
        row = await self._one(
            "SELECT outcome, task_uid, queued, open_count, available FROM picserve_submit_task_v1("
            "%(uid)s, %(key)s, %(action)s, %(kind)s, %(version)s, %(spec)s, %(cost)s, %(model)s, "
            "%(loras)s::text[], %(url)s, %(events)s::text[], %(max_open)s, %(max_queued)s, %(request)s, "
            "%(fingerprint)s, %(window)s, %(queue)s, %(task_name)s)",
            {
                "uid": task_uid,
                "key": public_key,
                "action": action,
                "kind": spec.kind,
                "version": spec.version,
                "spec": Jsonb(spec.to_dict()),
                "cost": cost,
                # model_code and loras: what the workers' fetch routes the task by (routing.py)
                "model": needs.model_code,
                "loras": workers.affinity_keys(needs.loras, needs.controls),
                "url": webhook.url if webhook else None,
                "events": list(webhook.events) if webhook else [],
                "max_open": max_open_tasks,
                "max_queued": max_queued,
                "request": request.request_uuid if request else None,
                "fingerprint": request.fingerprint if request else None,
                "window": request.window if request else 0.0,
                "queue": QUEUE,
                "task_name": TASK_NAME,
            },
        )
        assert row is not None  # the function always returns its one row
        outcome = row["outcome"]
        if outcome in ("created", "repeat"):
            created: str = row["task_uid"]
            return created
        if outcome == "conflict":
            assert request is not None
            raise repository.idempotency_conflict(request.request_uuid, row["task_uid"])
        if outcome == "queue_full":
            raise repository.queue_full(max_queued or 0)
        if outcome == "open_cap":
            raise repository.too_many_open_tasks(int(row["open_count"]), max_open_tasks)
        available = int(row["available"])
        raise errors.InsufficientCredits(f"this request costs {cost} credits and {max(available, 0)} are available")

    async def _defer(self, conn: AsyncConnection[Any], task_uid: str) -> None:
        """Queue the task's job in the caller's transaction and point the task at it."""
        job = self.app.configure_task(TASK_NAME, queue=QUEUE, connection=conn)
        job_id = await job.defer_async(task_uid=task_uid)
        await conn.execute("UPDATE picserve_tasks SET job_id = %s WHERE task_uid = %s", (job_id, task_uid))

    async def queued_count(self) -> int:
        row = await self._one("SELECT count(*) AS n FROM picserve_tasks WHERE status = 'Queuing'")
        return int(row["n"]) if row else 0

    async def queued_by_model(self) -> dict[str, int]:
        rows = await self._all(
            # the main model a task needs, else its kind (as in memory.py); a row from before the
            # model_code column (migration 0004) names its model in its spec
            "SELECT coalesce(model_code, CASE WHEN spec_kind = 'generation' THEN spec->>'model_code' END, spec_kind) "
            "AS model, count(*) AS n FROM picserve_tasks WHERE status = 'Queuing' GROUP BY 1"
        )
        return {r["model"]: int(r["n"]) for r in rows}

    async def worker_memory(self, live_after: float) -> list[tuple[str, int]]:
        rows = await self._all(
            "SELECT device, memory_total FROM picserve_workers WHERE memory_total IS NOT NULL "
            "AND last_heartbeat > now() - make_interval(secs => %s)",
            (live_after,),
        )
        return [(str(r["device"]), int(r["memory_total"])) for r in rows]

    async def open_task_histogram(self) -> dict[int, int]:
        # one pass over the keys, each joined to its open tasks through picserve_tasks_key_status
        rows = await self._all(
            "SELECT n, count(*) AS keys FROM ("
            "  SELECT k.revoked, count(t.task_uid) AS n FROM picserve_keys k"
            "  LEFT JOIN picserve_tasks t ON t.public_key = k.public_key AND t.status = ANY(%s)"
            "  GROUP BY k.public_key, k.revoked"
            ") per_key WHERE n > 0 OR NOT revoked GROUP BY n",
            (_OPEN,),
        )
        return {int(r["n"]): int(r["keys"]) for r in rows}

    async def get_many(self, task_uids: Sequence[str], public_key: str) -> list[domain.TaskRecord]:
        rows = await self._all(
            "SELECT * FROM picserve_tasks WHERE task_uid = ANY(%s) AND public_key = %s",
            (list(task_uids), public_key),
        )
        return [domain.TaskRecord.from_row(r) for r in rows]

    async def list_tasks(
        self, statuses: Sequence[domain.TaskStatus], public_key: str | None, model_code: str | None, limit: int
    ) -> list[domain.TaskRecord]:
        rows = await self._all(
            "SELECT * FROM picserve_tasks WHERE (cardinality(%s::text[]) = 0 OR status = ANY(%s)) "
            "AND (%s::text IS NULL OR public_key = %s) AND (%s::text IS NULL OR model_code = %s) "
            "ORDER BY created_at DESC LIMIT %s",
            (*[[s.value for s in statuses]] * 2, public_key, public_key, model_code, model_code, limit),
        )
        return [domain.TaskRecord.from_row(r) for r in rows]

    async def get_details(
        self, task_uids: Sequence[str], public_key: str
    ) -> list[tuple[domain.TaskRecord, int | None]]:
        # one statement: the columns a TaskDetail shows, and a queued task's place in the queue
        # Positions in one pass over the queue's head, up to the last queued task asked for (the queued
        # index, in arrival order), instead of one count per task: rank() is 1 + the tasks queued
        # strictly before it, as queue_positions counts.
        rows = await self._all(
            f"WITH mine AS (SELECT {_DETAIL_COLUMNS} FROM picserve_tasks t "
            "  WHERE t.task_uid = ANY(%(uids)s) AND t.public_key = %(key)s), "
            "head AS (SELECT q.task_uid, rank() OVER (ORDER BY q.created_at) AS queue_position FROM picserve_tasks q "
            "  WHERE q.status = 'Queuing' "
            "  AND q.created_at <= (SELECT max(m.created_at) FROM mine m WHERE m.status = 'Queuing')) "
            "SELECT mine.*, head.queue_position FROM mine "
            "LEFT JOIN head ON head.task_uid = mine.task_uid AND mine.status = 'Queuing'",
            {"uids": list(task_uids), "key": public_key},
        )
        return [(domain.TaskRecord.from_row(r), r["queue_position"]) for r in rows]

    async def queue_positions(self, task_uids: Sequence[str]) -> dict[str, int]:
        rows = await self._all(
            "SELECT t.task_uid, 1 + (SELECT count(*) FROM picserve_tasks q WHERE q.status = 'Queuing' "
            "AND q.created_at < t.created_at) AS position FROM picserve_tasks t "
            "WHERE t.task_uid = ANY(%s) AND t.status = 'Queuing'",
            (list(task_uids),),
        )
        return {r["task_uid"]: int(r["position"]) for r in rows}

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
                await self._cancel_job(row["job_id"], abort=False)
            return
        # Not queued (any more): if a worker has it, ask its job to abort. Read after the update, so a
        # task taken between the two statements is seen Running and still stops.
        row = await self._one(
            "SELECT job_id FROM picserve_tasks WHERE task_uid = %s AND status = 'Running'", (task_uid,)
        )
        if row is not None and row["job_id"] is not None:
            await self._cancel_job(row["job_id"], abort=True)

    async def _cancel_job(self, job_id: int, abort: bool) -> None:
        """procrastinate's cancel of `job_id`, with an unreachable database as ServerBusy (as `_connection`)."""
        try:
            await self.app.job_manager.cancel_job_by_id_async(job_id, abort=abort)
        except _UNREACHABLE as exc:
            raise _busy(exc) from exc

    async def delete_ended_before(self, cutoff: datetime) -> list[domain.TaskRecord]:
        rows = await self._all(
            "DELETE FROM picserve_tasks WHERE finished_at < %s AND status <> ALL(%s) RETURNING *", (cutoff, _OPEN)
        )
        return [domain.TaskRecord.from_row(row) for row in rows]

    # --- the worker side (fenced transitions) -----------------------------------------------------
    async def mark_running(self, task_uid: str, worker: str) -> tuple[domain.Run, domain.ActionSpec] | None:
        row = await self._one(
            "UPDATE picserve_tasks SET status = 'Running', worker = %s, started_at = now(), progress = 0, "
            "attempt = attempt + 1 WHERE task_uid = %s AND status = 'Queuing' "
            "RETURNING spec_kind, spec_version, spec, attempt",
            (worker, task_uid),
        )
        if row is None:
            return None
        spec = domain.spec_from_json(row["spec_kind"], row["spec_version"], row["spec"])
        return domain.Run(task_uid, worker, row["attempt"]), spec

    async def run_of(self, task_uid: str) -> tuple[domain.TaskStatus, domain.Run | None] | None:
        row = await self._one("SELECT status, worker, attempt FROM picserve_tasks WHERE task_uid = %s", (task_uid,))
        if row is None:
            return None
        run = domain.Run(task_uid, row["worker"], row["attempt"]) if row["worker"] is not None else None
        return domain.TaskStatus(row["status"]), run

    async def record_progress(
        self, run: domain.Run, progress: float, preview: str | None = None, webhook: bool = False
    ) -> bool:
        if webhook:  # the task's `progress` delivery (migration 0006), when it wants one, in the same statement
            row = await self._one(
                "WITH done AS (UPDATE picserve_tasks SET progress = %s, preview = coalesce(%s, preview) "
                f"WHERE {_RUN} RETURNING task_uid, webhook_url, webhook_events, status, progress) "
                "SELECT picserve_enqueue_webhook(task_uid, 'progress', webhook_url, webhook_events, status, progress) "
                "FROM done",
                (progress, preview, *_of(run)),
            )
            return row is not None
        row = await self._one(
            f"UPDATE picserve_tasks SET progress = %s, preview = coalesce(%s, preview) WHERE {_RUN} RETURNING 1",
            (progress, preview, *_of(run)),
        )
        return row is not None

    async def finish_task(
        self, run: domain.Run, result_keys: Sequence[str], seeds: Sequence[int], texts: Sequence[str] = ()
    ) -> bool:
        row = await self._one(
            "WITH done AS (UPDATE picserve_tasks SET status = 'Finished', progress = 1, result_keys = %s, "
            f"  seeds = %s, result_texts = %s, finished_at = now() WHERE {_RUN} "
            f"  RETURNING {_ENDED}, public_key, cost), "
            f"run AS ({_RECORD_RUN}) "
            "UPDATE picserve_keys k SET used_credits = k.used_credits + done.cost FROM done "
            "WHERE k.public_key = done.public_key RETURNING 1",
            (list(result_keys), list(seeds), list(texts), *_of(run), domain.RunEnd.FINISHED.value, ""),
        )
        return row is not None

    async def fail_task(self, run: domain.Run, code: int, message: str) -> bool:
        row = await self._one(
            "WITH done AS (UPDATE picserve_tasks SET status = 'Error', error_code = %s, error_message = %s, "
            f"finished_at = now() WHERE {_RUN} RETURNING {_ENDED}) {_RECORD_RUN} RETURNING 1",
            (code, message, *_of(run), domain.RunEnd.FAILED.value, message),
        )
        return row is not None

    async def cancel_run(self, run: domain.Run) -> bool:
        row = await self._one(
            "WITH done AS (UPDATE picserve_tasks SET status = 'Canceled', error_code = 510, error_message = %s, "
            f"finished_at = now() WHERE {_RUN} RETURNING {_ENDED}) {_RECORD_RUN} RETURNING 1",
            (_CANCELED_MESSAGE, *_of(run), domain.RunEnd.CANCELED.value, ""),
        )
        return row is not None

    async def requeue_run(
        self,
        run: domain.Run,
        cause: domain.RunEnd = domain.RunEnd.REQUEUED,
        max_lost: int = Settings.max_lost_runs,
        detail: str = "",
    ) -> domain.Requeue | None:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_HANDED_BACK} FROM picserve_tasks WHERE {_RUN} FOR UPDATE", _of(run)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            return await self._hand_back(conn, row, cause, detail, max_lost)

    async def runs_of(self, task_uid: str) -> list[domain.RunRecord]:
        rows = await self._all("SELECT * FROM picserve_runs WHERE task_uid = %s ORDER BY attempt", (task_uid,))
        return [
            domain.RunRecord(
                task_uid=r["task_uid"],
                attempt=r["attempt"],
                worker=r["worker"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                ended_as=domain.RunEnd(r["ended_as"]),
                detail=r["detail"],
            )
            for r in rows
        ]

    async def _hand_back(
        self, conn: AsyncConnection[Any], task: Row, cause: domain.RunEnd, detail: str, max_lost: int
    ) -> domain.Requeue:
        """The run of `task` (its row locked by the caller's transaction) ended as `cause`: record it, then
        queue the task again under a new job, or, when this was a loss beyond `max_lost`, end it Error
        (ErrorCode 505, never charged: only a finish charges)."""
        task_uid = task["task_uid"]
        await conn.execute(
            "INSERT INTO picserve_runs (task_uid, attempt, worker, started_at, ended_as, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (task_uid, task["attempt"], task["worker"], task["started_at"], cause.value, detail),
        )
        losses: dict[domain.RunEnd, int] = {}
        if cause.is_loss:
            cur = await conn.execute(
                "SELECT ended_as, count(*) FROM picserve_runs WHERE task_uid = %s AND ended_as = ANY(%s) "
                "GROUP BY ended_as",
                (task_uid, [end.value for end in domain.RunEnd if end.is_loss]),
            )
            counted = {domain.RunEnd(name): int(n) for name, n in await cur.fetchall()}
            losses = {end: counted.get(end, 0) for end in domain.RunEnd if end.is_loss}
        lost = sum(losses.values())
        digest = _digest(task)
        if lost > max_lost:
            await conn.execute(
                "UPDATE picserve_tasks SET status = 'Error', error_code = %s, error_message = %s, finished_at = now() "
                "WHERE task_uid = %s",
                (errors.StoppedItsWorkers.ret_code, domain.gave_up_message(losses), task_uid),
            )
            return domain.Requeue(task_uid, domain.TaskStatus.ERROR, lost, digest)
        await conn.execute(
            "UPDATE picserve_tasks SET status = 'Queuing', worker = NULL, progress = 0 WHERE task_uid = %s", (task_uid,)
        )
        await self._defer(conn, task_uid)
        return domain.Requeue(task_uid, domain.TaskStatus.QUEUING, lost, digest)

    # --- recovery (PostgreSQL only: procrastinate's stalled jobs) ---------------------------------
    async def requeue_job(
        self, job_id: int, max_lost: int = Settings.max_lost_runs, detail: str = ""
    ) -> tuple[bool, domain.Requeue | None]:
        """End the stalled job `job_id` (its worker died) and, when its task is still open under it (Running,
        or Queuing: the worker died between taking the job and starting the task), queue the task again
        under a new job, in one transaction. A Running task's run is recorded as lost: beyond `max_lost`
        losses the task ends Error instead (ErrorCode 505). Returns whether this call ended the job
        (False: another sweeper did, or it is no longer `doing`) and what became of its task (None: it
        had ended, or was deleted).

        A new job, never the same one retried: a worker that only froze may thaw and finish its job,
        and procrastinate's finish accepts a job that is back in `todo` — it would delete the retried
        job, and the task would wait forever for a job that no longer exists. The frozen worker's own
        writes are refused by the run fence; its finish of the ended job is refused by procrastinate.
        """
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE procrastinate_jobs SET status = 'failed', abort_requested = false, attempts = attempts + 1 "
                "WHERE id = %s AND status = 'doing' RETURNING id",
                (job_id,),
            )
            if await cur.fetchone() is None:
                return False, None
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_HANDED_BACK}, status FROM picserve_tasks "
                "WHERE job_id = %s AND status IN ('Running', 'Queuing') FOR UPDATE",
                (job_id,),
            )
            task = await cur.fetchone()
            if task is None:  # its task ended (or was deleted): nothing to run again
                return True, None
            if task["status"] == "Running":
                return True, await self._hand_back(conn, task, domain.RunEnd.LOST, detail, max_lost)
            # taken by the dead worker, never started: no run to record, just a new job
            await self._defer(conn, task["task_uid"])
            return True, domain.Requeue(task["task_uid"], domain.TaskStatus.QUEUING, 0, _digest(task))


async def _find_request(conn: AsyncConnection[Any], public_key: str, request: domain.RequestId) -> str | None:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT fingerprint, task_uid FROM picserve_requests WHERE public_key = %s AND request_uuid = %s "
        "AND created_at > now() - make_interval(secs => %s)",
        (public_key, request.request_uuid, request.window),
    )
    row: DictRow | None = await cur.fetchone()
    if row is None:
        return None
    if row["fingerprint"] != request.fingerprint:
        raise repository.idempotency_conflict(request.request_uuid, row["task_uid"])
    task_uid: str = row["task_uid"]
    return task_uid

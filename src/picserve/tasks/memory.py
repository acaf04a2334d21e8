"""The `TaskRepository` protocol in dicts, for tests: the same guarded transitions as PostgreSQL.

Jobs still go through procrastinate, on whatever connector the App has (`in_memory_app()` gives one
on procrastinate's InMemoryConnector), so a worker runs them exactly as it runs PostgreSQL's.
Every transition is free of awaits, hence atomic on the event loop. create_task awaits the defer
between its balance check and its job id, so it holds a lock: two calls never spend the same credits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import procrastinate
import procrastinate.testing

from picserve import domain, errors
from picserve.config import Settings
from picserve.tasks import repository
from picserve.tasks.queue import QUEUE, TASK_NAME, WEBHOOK_QUEUE, WEBHOOK_TASK_NAME

__all__ = ["InMemoryRepository", "in_memory_app"]

_OPEN = (domain.TaskStatus.QUEUING, domain.TaskStatus.RUNNING)


def in_memory_app() -> procrastinate.App:
    """A procrastinate App on an InMemoryConnector.

    Ready to defer jobs without `open_async()`; a worker run on it (worker/process.py `work`)
    registers the job and opens it as usual.
    """
    app = procrastinate.App(connector=procrastinate.testing.InMemoryConnector())
    return app


def _now() -> datetime:
    return datetime.now(UTC)


class InMemoryRepository:
    """Keys and tasks in dicts; each task's job deferred on `app`, which must have the job registered."""

    def __init__(self, app: procrastinate.App, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self._keys: dict[str, domain.Account] = {}  # insertion order = oldest first
        self._tasks: dict[str, domain.TaskRecord] = {}  # insertion order = oldest first
        self._job_ids: dict[str, int] = {}
        #: (public key, request_uuid) → (fingerprint, task_uid, when)
        self._requests: dict[tuple[str, str], tuple[str, str, datetime]] = {}
        #: public key → GCRA's theoretical arrival time of its next request, on `clock`
        self._rate_tat: dict[str, float] = {}
        self._clock = clock
        self._lock = asyncio.Lock()
        #: webhook deliveries (migration 0006's table), made as its trigger makes them
        self.deliveries: dict[str, domain.WebhookDelivery] = {}
        self._deferring: set[asyncio.Future[int]] = set()
        #: each task's ended runs (migration 0010's table)
        self._runs: dict[str, list[domain.RunRecord]] = {}

    # --- keys -------------------------------------------------------------------------------
    async def create_key(
        self,
        name: str,
        credits: int,
        max_open_tasks: int | None = None,
        max_requests_per_minute: int | None = None,
        admin: bool = False,
    ) -> domain.Account:
        account = domain.Account(
            public_key=secrets.token_hex(16),
            private_key=secrets.token_hex(24),
            name=name,
            total_credits=credits,
            max_open_tasks=max_open_tasks,
            max_requests_per_minute=max_requests_per_minute,
            admin=admin,
        )
        self._keys[account.public_key] = account
        return account

    async def list_keys(self) -> list[domain.Account]:
        return list(self._keys.values())

    async def get_account(self, public_key: str) -> domain.Account | None:
        return self._keys.get(public_key)

    async def revoke_key(self, public_key: str) -> bool:
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(account, revoked=True)
        return True

    async def add_credits(self, public_key: str, credits: int) -> bool:
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(account, total_credits=account.total_credits + credits)
        return True

    async def set_limits(
        self, public_key: str, max_open_tasks: int | None, max_requests_per_minute: int | None
    ) -> bool:
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(
            account, max_open_tasks=max_open_tasks, max_requests_per_minute=max_requests_per_minute
        )
        return True

    async def set_scheduling(self, public_key: str, priority: int, weight: float) -> bool:
        repository.check_weight(weight)
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(account, priority=priority, weight=weight)
        return True

    async def set_webhook(self, public_key: str, url: str | None) -> bool:
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(account, webhook_url=url)
        return True

    async def set_admin(self, public_key: str, admin: bool) -> bool:
        account = self._keys.get(public_key)
        if account is None:
            return False
        self._keys[public_key] = dataclasses.replace(account, admin=admin)
        return True

    async def take_request(self, public_key: str, per_minute: int) -> float:
        now, interval = self._clock(), 60.0 / per_minute
        due = max(self._rate_tat.get(public_key, now), now) + interval
        wait = due - 60.0 - now
        if wait > 0:
            return wait
        self._rate_tat[public_key] = due
        return 0.0

    # --- the API side ---------------------------------------------------------------------------
    async def find_request(self, public_key: str, request: domain.RequestId) -> str | None:
        found = self._requests.get((public_key, request.request_uuid))
        if found is None or found[2] < _now() - timedelta(seconds=request.window):
            return None
        fingerprint, task_uid, _ = found
        if fingerprint != request.fingerprint:
            raise repository.idempotency_conflict(request.request_uuid, task_uid)
        return task_uid

    async def before_submit(
        self, public_key: str, request: domain.RequestId | None, live_after: float | None
    ) -> tuple[str | None, list[tuple[str, int]]]:
        earlier = None if request is None else await self.find_request(public_key, request)
        return earlier, [] if live_after is None else await self.worker_memory(live_after)

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
        async with self._lock:
            if task_uid in self._tasks:
                raise ValueError(f"task {task_uid} already exists")
            if max_queued is not None and await self.queued_count() >= max_queued:
                raise repository.queue_full(max_queued)
            if request is not None:
                earlier = await self.find_request(public_key, request)
                if earlier is not None:
                    return earlier
            open_count = sum(1 for t in self._tasks.values() if t.public_key == public_key and t.status in _OPEN)
            if max_open_tasks and open_count >= max_open_tasks:
                raise repository.too_many_open_tasks(open_count, max_open_tasks)
            available = self._available(public_key)
            if available < cost:
                raise errors.InsufficientCredits(
                    f"this request costs {cost} credits and {max(available, 0)} are available"
                )
            self._tasks[task_uid] = domain.TaskRecord(
                task_uid=task_uid,
                public_key=public_key,
                action=action,
                status=domain.TaskStatus.QUEUING,
                spec=spec,
                cost=cost,
                created_at=_now(),
                webhook=webhook,
            )
            try:
                job_id = await self.app.configure_task(TASK_NAME, queue=QUEUE).defer_async(task_uid=task_uid)
            except BaseException:
                del self._tasks[task_uid]  # all or nothing, as PostgreSQL's rollback
                raise
            self._job_ids[task_uid] = job_id
            if request is not None:
                self._requests[(public_key, request.request_uuid)] = (request.fingerprint, task_uid, _now())
            return task_uid

    async def queued_count(self) -> int:
        return sum(1 for t in self._tasks.values() if t.status is domain.TaskStatus.QUEUING)

    async def queued_by_model(self) -> dict[str, int]:
        queued = (t.spec for t in self._tasks.values() if t.status is domain.TaskStatus.QUEUING)
        return dict(Counter(spec.needs().model_code or spec.kind for spec in queued))

    async def worker_memory(self, live_after: float) -> list[tuple[str, int]]:
        return []  # workers register in PostgreSQL only

    async def open_task_histogram(self) -> dict[int, int]:
        per_key = Counter(t.public_key for t in self._tasks.values() if t.status in _OPEN)
        counts = (per_key[k] for k, account in self._keys.items() if per_key[k] or not account.revoked)
        return dict(Counter(counts))

    async def get_many(self, task_uids: Sequence[str], public_key: str) -> list[domain.TaskRecord]:
        found = (self._tasks.get(uid) for uid in dict.fromkeys(task_uids))
        return [t for t in found if t is not None and t.public_key == public_key]

    async def list_tasks(
        self, statuses: Sequence[domain.TaskStatus], public_key: str | None, model_code: str | None, limit: int
    ) -> list[domain.TaskRecord]:
        found = [
            t
            for t in reversed(self._tasks.values())
            if (not statuses or t.status in statuses)
            and public_key in (None, t.public_key)
            and model_code in (None, t.spec.needs().model_code)
        ]
        return found[:limit]

    async def get_details(
        self, task_uids: Sequence[str], public_key: str
    ) -> list[tuple[domain.TaskRecord, int | None]]:
        tasks = await self.get_many(task_uids, public_key)
        positions = await self.queue_positions([t.task_uid for t in tasks])
        return [(t, positions.get(t.task_uid)) for t in tasks]

    async def queue_positions(self, task_uids: Sequence[str]) -> dict[str, int]:
        queued = [t.task_uid for t in self._tasks.values() if t.status is domain.TaskStatus.QUEUING]  # arrival order
        return {uid: queued.index(uid) + 1 for uid in task_uids if uid in queued}

    async def open_tasks(self, public_key: str) -> list[str]:
        return [t.task_uid for t in self._tasks.values() if t.public_key == public_key and t.status in _OPEN]

    async def request_cancel(self, task_uid: str) -> None:
        async with self._lock:  # waits for a create_task of this uid to have its job id
            job_id = self._job_ids.get(task_uid)
        if job_id is None:
            return
        # No await between the status read and the guarded write: the worker cannot slip in.
        if self._task_in(task_uid, domain.TaskStatus.QUEUING) is not None and self._cancel(task_uid):
            await self.app.job_manager.cancel_job_by_id_async(job_id, abort=False)
        elif self._task_in(task_uid, domain.TaskStatus.RUNNING) is not None:
            await self.app.job_manager.cancel_job_by_id_async(job_id, abort=True)

    async def delete_ended_before(self, cutoff: datetime) -> list[domain.TaskRecord]:
        ended = [t for t in self._tasks.values() if t.status.is_terminal and t.finished_at and t.finished_at < cutoff]
        for task in ended:
            del self._tasks[task.task_uid]
            self._job_ids.pop(task.task_uid, None)
            self._runs.pop(task.task_uid, None)
        gone = {t.task_uid for t in ended}
        self._requests = {k: v for k, v in self._requests.items() if v[1] not in gone}
        return ended

    # --- the worker side (fenced transitions) -----------------------------------------------------
    async def mark_running(self, task_uid: str, worker: str) -> tuple[domain.Run, domain.ActionSpec] | None:
        task = self._task_in(task_uid, domain.TaskStatus.QUEUING)
        if task is None:
            return None
        run = domain.Run(task_uid, worker, task.attempt + 1)
        self._save(
            dataclasses.replace(
                task,
                status=domain.TaskStatus.RUNNING,
                worker=worker,
                attempt=run.attempt,
                started_at=_now(),
                progress=0.0,
            )
        )
        return run, task.spec

    async def run_of(self, task_uid: str) -> tuple[domain.TaskStatus, domain.Run | None] | None:
        task = self._tasks.get(task_uid)
        if task is None:
            return None
        return task.status, domain.Run(task_uid, task.worker, task.attempt) if task.worker is not None else None

    async def record_progress(
        self, run: domain.Run, progress: float, preview: str | None = None, webhook: bool = False
    ) -> bool:
        task = self._current(run)
        if task is not None:
            self._save(dataclasses.replace(task, progress=progress, preview=preview or task.preview))
            if webhook:
                self._webhook(self._tasks[run.task_uid], "progress")
        return task is not None

    async def finish_task(
        self, run: domain.Run, result_keys: Sequence[str], seeds: Sequence[int], texts: Sequence[str] = ()
    ) -> bool:
        task = self._current(run)
        if task is None:
            return False
        self._record(task, domain.RunEnd.FINISHED)
        self._save(
            dataclasses.replace(
                task,
                status=domain.TaskStatus.FINISHED,
                progress=1.0,
                result_keys=tuple(result_keys),
                seeds=tuple(seeds),
                result_texts=tuple(texts),
                finished_at=_now(),
            )
        )
        account = self._keys.get(task.public_key)
        if account is not None:
            self._keys[task.public_key] = dataclasses.replace(account, used_credits=account.used_credits + task.cost)
        return True

    async def fail_task(self, run: domain.Run, code: int, message: str) -> bool:
        task = self._current(run)
        if task is None:
            return False
        self._record(task, domain.RunEnd.FAILED, message)
        return self._end(run.task_uid, domain.TaskStatus.ERROR, code, message)

    async def cancel_run(self, run: domain.Run) -> bool:
        task = self._current(run)
        if task is None:
            return False
        self._record(task, domain.RunEnd.CANCELED)
        return self._cancel(run.task_uid)

    async def requeue_run(
        self,
        run: domain.Run,
        cause: domain.RunEnd = domain.RunEnd.REQUEUED,
        max_lost: int = Settings.max_lost_runs,
        detail: str = "",
    ) -> domain.Requeue | None:
        task = self._current(run)
        if task is None:
            return None
        self._record(task, cause, detail)
        losses = {
            end: sum(1 for r in self._runs[task.task_uid] if r.ended_as is end) for end in domain.RunEnd if end.is_loss
        }
        lost = sum(losses.values()) if cause.is_loss else 0
        digest = domain.spec_digest(task.spec)
        if lost > max_lost:
            self._end(
                task.task_uid,
                domain.TaskStatus.ERROR,
                errors.StoppedItsWorkers.ret_code,
                domain.gave_up_message(losses),
            )
            return domain.Requeue(task.task_uid, domain.TaskStatus.ERROR, lost, digest)
        self._save(dataclasses.replace(task, status=domain.TaskStatus.QUEUING, worker=None, progress=0.0))
        self._job_ids[run.task_uid] = await self.app.configure_task(TASK_NAME, queue=QUEUE).defer_async(
            task_uid=run.task_uid
        )
        return domain.Requeue(task.task_uid, domain.TaskStatus.QUEUING, lost, digest)

    async def runs_of(self, task_uid: str) -> list[domain.RunRecord]:
        return list(self._runs.get(task_uid, ()))

    # --- helpers ------------------------------------------------------------------------------
    def _available(self, public_key: str) -> int:
        """Total − used − the cost of the key's open tasks; 0 for an unknown key."""
        account = self._keys.get(public_key)
        if account is None:
            return 0
        held = sum(t.cost for t in self._tasks.values() if t.public_key == public_key and t.status in _OPEN)
        return account.total_credits - account.used_credits - held

    def _task_in(self, task_uid: str, *expected: domain.TaskStatus) -> domain.TaskRecord | None:
        """The task when it is in one of the `expected` statuses: the guard of every transition."""
        task = self._tasks.get(task_uid)
        return task if task is not None and task.status in expected else None

    def _save(self, task: domain.TaskRecord) -> None:
        if task.preview is not None and task.status is not domain.TaskStatus.RUNNING:
            task = dataclasses.replace(task, preview=None)  # as migration 0005's trigger does
        before = self._tasks.get(task.task_uid)
        self._tasks[task.task_uid] = task
        # as migration 0006's trigger does: `completed` when the task ends, `start` when it is taken
        if before is not None and before.status is not task.status:
            if task.status.is_terminal and not before.status.is_terminal:
                self._webhook(task, "completed")
            elif task.status is domain.TaskStatus.RUNNING:
                self._webhook(task, "start")

    def _webhook(self, task: domain.TaskRecord, event: str) -> None:
        """A delivery of `event` when the task's webhook wants it, and its job on `app` (deferred right
        after: the in-memory connector has no transaction to share)."""
        if task.webhook is None or event not in task.webhook.events:
            return
        if event == "completed" and any(
            d.task_uid == task.task_uid and d.event == "completed" for d in self.deliveries.values()
        ):
            return
        delivery = domain.WebhookDelivery(
            delivery_id=str(uuid.uuid4()),
            task_uid=task.task_uid,
            public_key=task.public_key,
            event=event,
            url=task.webhook.url,
            status=task.status,
            progress=task.progress,
        )
        self.deliveries[delivery.delivery_id] = delivery
        job = self.app.configure_task(WEBHOOK_TASK_NAME, queue=WEBHOOK_QUEUE)
        deferring = asyncio.ensure_future(job.defer_async(delivery_id=delivery.delivery_id))
        self._deferring.add(deferring)
        deferring.add_done_callback(self._deferring.discard)

    def _current(self, run: domain.Run) -> domain.TaskRecord | None:
        """The run's task when it is Running under this very run: the fence of every worker write."""
        task = self._task_in(run.task_uid, domain.TaskStatus.RUNNING)
        return task if task is not None and (task.worker, task.attempt) == (run.worker, run.attempt) else None

    def _record(self, task: domain.TaskRecord, cause: domain.RunEnd, detail: str = "") -> None:
        """The end of `task`'s current run, as migration 0010's table keeps it."""
        record = domain.RunRecord(task.task_uid, task.attempt, task.worker, task.started_at, _now(), cause, detail)
        self._runs.setdefault(task.task_uid, []).append(record)

    def _cancel(self, task_uid: str) -> bool:
        return self._end(task_uid, domain.TaskStatus.CANCELED, errors.TaskCanceled.ret_code, "Task was cancelled")

    def _end(self, task_uid: str, status: domain.TaskStatus, code: int, message: str) -> bool:
        """An open task → the terminal `status` with its ErrorCode and message (never charged)."""
        task = self._task_in(task_uid, *_OPEN)
        if task is None:
            return False
        self._save(dataclasses.replace(task, status=status, error_code=code, error_message=message, finished_at=_now()))
        return True

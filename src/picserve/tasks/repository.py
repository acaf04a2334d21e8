"""The `TaskRepository` protocol: every read and write of keys and tasks, and the queue behind them.

Two implementations pass one contract suite (tests/contract/test_repository.py):
`postgres.PostgresRepository` (tables + procrastinate jobs, in one transaction) and
`memory.InMemoryRepository` (dicts + a procrastinate App on any connector, for tests).

Status changes are guarded: each names the status it expects, and returns False (or None) when the
task is not in it, so two writers racing on one task can never both win. A worker's writes are also
fenced: `mark_running` starts a `Run` (task, worker, attempt number) and every later write of that
worker names it, so a worker whose run was superseded (it froze past the heartbeat timeout, the task
was queued again and another worker took it) gets its writes refused.

    Queuing ──mark_running──► Running(run) ──finish_task(run)──► Finished   (charged here, once)
       │                        ├──fail_task(run)──► Error
       │                        ├──cancel_run(run)──► Canceled   (the worker acknowledges an abort)
       │                        └──requeue_run(run, cause)──► Queuing   (a new job, a new run later)
       │                                                  └──► Error 505 (its lost runs exceeded the limit)
       └──request_cancel──► Canceled
    Running ──requeue_job──► Queuing, or Error 505   (its worker died; PostgreSQL recovery only)

Every run's end is recorded with its cause (`runs_of`, migration 0010). A shutdown's hand-back is not a
loss; a worker that died under the run, a device that failed, a run that hung past its deadline are
(`domain.RunEnd.is_loss`). A task lost more than `max_lost` times (PICSERVE_MAX_LOST_RUNS) is not
queued again: it ends Error with ErrorCode 505 (`errors.StoppedItsWorkers`), charged nothing, with its
`completed` webhook, so one poison request cannot take the fleet's workers down in turn, forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from picserve import domain, errors
from picserve.config import Settings

__all__ = ["TaskRepository", "check_weight", "idempotency_conflict", "too_many_open_tasks"]


class TaskRepository(Protocol):
    # --- keys -------------------------------------------------------------------------------
    async def create_key(
        self,
        name: str,
        credits: int,
        max_open_tasks: int | None = None,
        max_requests_per_minute: int | None = None,
        admin: bool = False,
    ) -> domain.Account:
        """A new key pair with `credits` total credits and its own limits (None = the server's); `admin`:
        an operator's key, which may send the admin actions (ImportModel)."""
        ...

    async def list_keys(self) -> list[domain.Account]:
        """Every key, oldest first."""
        ...

    async def get_account(self, public_key: str) -> domain.Account | None:
        """The key's account (revoked ones included), or None. Read afresh on every call: a revocation
        or a new limit takes effect on the next request, on every API node."""
        ...

    async def revoke_key(self, public_key: str) -> bool:
        """Refuse the key from now on; False when there is no such key."""
        ...

    async def add_credits(self, public_key: str, credits: int) -> bool:
        """Add to the key's total credits; False when there is no such key."""
        ...

    async def set_limits(
        self, public_key: str, max_open_tasks: int | None, max_requests_per_minute: int | None
    ) -> bool:
        """Set the key's own limits (None = the server's, 0 = none); False when there is no such key."""
        ...

    async def set_scheduling(self, public_key: str, priority: int, weight: float) -> bool:
        """Set the key's scheduling (worker/routing.py): `priority` (higher first, strictly; default 0)
        and `weight` (> 0: its share among keys of equal priority; default 1); False when there is no
        such key. Raises ValueError for a weight ≤ 0."""
        ...

    async def set_webhook(self, public_key: str, url: str | None) -> bool:
        """Set the key's default webhook URL (None: none): the webhook of its tasks whose request names
        none, for the `completed` event; False when there is no such key."""
        ...

    async def set_admin(self, public_key: str, admin: bool) -> bool:
        """Make the key an operator's key (admin actions allowed) or an ordinary one; False when there is
        no such key."""
        ...

    async def take_request(self, public_key: str, per_minute: int) -> float:
        """Count one request of the key against a rate of `per_minute` (> 0) shared by every API node:
        0.0 when it is within the rate, else the seconds until the next one will be (not counted).

        A token bucket of `per_minute` tokens refilled continuously, kept as GCRA's one timestamp
        (the key's theoretical arrival time): a burst of up to `per_minute` requests passes, then one
        per 60/`per_minute` seconds.
        """
        ...

    # --- the API side ---------------------------------------------------------------------------
    async def find_request(self, public_key: str, request: domain.RequestId) -> str | None:
        """The TaskUID created for the key's `request.request_uuid` within `request.window` seconds, or
        None. Raises IdempotencyConflict when that task was made from other parameters."""
        ...

    async def before_submit(
        self, public_key: str, request: domain.RequestId | None, live_after: float | None
    ) -> tuple[str | None, list[tuple[str, int]]]:
        """What a submit reads before its work, in one go: `find_request(public_key, request)` (None
        without a request) and `worker_memory(live_after)` ([] when `live_after` is None)."""
        ...

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
        """Insert a Queuing task and enqueue its job, atomically; returns its TaskUID.

        With `webhook`, the task's events are posted there (webhooks/): a delivery is made, in the
        same transaction, when the task is taken (`start`), when a progress write asks for one
        (`progress`) and when it ends (`completed`, exactly once), for the events it names.

        With `request`, a resend of a request already accepted (same request_uuid and fingerprint
        within the window) writes nothing and returns the first task's TaskUID; the same request_uuid
        with another fingerprint raises IdempotencyConflict. Before either, with `max_queued`, it
        raises ServerBusy (writing nothing) when `max_queued` tasks of any key are Queuing already.
        Otherwise, writing nothing, it raises TooManyOpenTasks when the key has `max_open_tasks`
        (> 0) Queuing or Running tasks, and
        InsufficientCredits when the key's available credits (total − used − the cost of its open
        tasks) are fewer than `cost`. Concurrent calls for one key are serialised: two never spend the
        same credits, pass the cap together, or both create a task for one request_uuid.
        """
        ...

    async def queued_count(self) -> int:
        """Tasks in Queuing, over every key."""
        ...

    async def queued_by_model(self) -> dict[str, int]:
        """Tasks in Queuing per main model (ModelCode), over every key; models with none are left out."""
        ...

    async def worker_memory(self, live_after: float) -> list[tuple[str, int]]:
        """(device, its whole memory in bytes) of each live worker of the registry (heard from within
        `live_after` seconds) that reported its memory; [] where there is no registry."""
        ...

    async def open_task_histogram(self) -> dict[int, int]:
        """How many keys have each number of open (Queuing or Running) tasks: {open tasks: keys}. Every
        key counts, with 0 when it has none, except a revoked key with none. No key is named (what the
        metrics bucket)."""
        ...

    async def get_many(self, task_uids: Sequence[str], public_key: str) -> list[domain.TaskRecord]:
        """The tasks among `task_uids` that belong to `public_key`, in no particular order."""
        ...

    async def open_tasks(self, public_key: str) -> list[str]:
        """The key's Queuing and Running tasks, oldest first."""
        ...

    async def list_tasks(
        self, statuses: Sequence[domain.TaskStatus], public_key: str | None, model_code: str | None, limit: int
    ) -> list[domain.TaskRecord]:
        """Every key's tasks (the operator's view), newest first, at most `limit`: of those statuses
        (none: any), that key, that main model, where given."""
        ...

    async def get_details(
        self, task_uids: Sequence[str], public_key: str
    ) -> list[tuple[domain.TaskRecord, int | None]]:
        """What a poll shows, in one go: `get_many(task_uids, public_key)`, each task with its
        `queue_positions` entry (None unless it is queued). The records may leave out what a
        TaskDetail does not show (its webhook, routing and attempt)."""
        ...

    async def queue_positions(self, task_uids: Sequence[str]) -> dict[str, int]:
        """For each queued task among `task_uids`: 1 + the tasks of any key queued before it (the queue
        in arrival order; the fetch's fair share and affinity may start it sooner)."""
        ...

    async def request_cancel(self, task_uid: str) -> None:
        """A client's cancel: a Queuing task becomes Canceled now and its job never runs; a Running
        task's job is asked to abort (its worker writes Canceled at the next step). A task taken by a
        worker while this runs is still asked to abort: a cancel is never lost. No-op otherwise."""
        ...

    async def delete_ended_before(self, cutoff: datetime) -> list[domain.TaskRecord]:
        """Delete the tasks that ended (Finished, Error, Canceled) before `cutoff`; returns them, for the
        caller to delete their files from the store."""
        ...

    # --- the worker side (fenced transitions) -----------------------------------------------------
    async def mark_running(self, task_uid: str, worker: str) -> tuple[domain.Run, domain.ActionSpec] | None:
        """Queuing → Running under a new attempt number; the run and the task's spec, or None when the
        task is not Queuing (cancelled, or taken by another worker)."""
        ...

    async def run_of(self, task_uid: str) -> tuple[domain.TaskStatus, domain.Run | None] | None:
        """The task's status and the run that last took it (None once it is queued again, or never
        taken); None for an unknown task. What a worker reads to learn whether a write whose reply
        was lost (the connection broke mid-statement) was applied."""
        ...

    async def record_progress(
        self, run: domain.Run, progress: float, preview: str | None = None, webhook: bool = False
    ) -> bool:
        """The fraction done (0..1) of the run's task, and its latest preview image (a data URI; None:
        keep the last one); False when `run` is not the task's current run. A task that leaves Running
        drops its preview. With `webhook`, a `progress` delivery too, when the task's webhook wants it."""
        ...

    async def finish_task(
        self, run: domain.Run, result_keys: Sequence[str], seeds: Sequence[int], texts: Sequence[str] = ()
    ) -> bool:
        """Running → Finished with its results (images, seeds, texts), and its cost charged to its key, in
        one step; False (nothing written, nothing charged) when `run` is not the task's current run."""
        ...

    async def fail_task(self, run: domain.Run, code: int, message: str) -> bool:
        """Running → Error with a task ErrorCode and message, for the current run only."""
        ...

    async def cancel_run(self, run: domain.Run) -> bool:
        """Running → Canceled (ErrorCode 510), for the current run only. Never charged."""
        ...

    async def requeue_run(
        self,
        run: domain.Run,
        cause: domain.RunEnd = domain.RunEnd.REQUEUED,
        max_lost: int = Settings.max_lost_runs,
        detail: str = "",
    ) -> domain.Requeue | None:
        """Running → Queuing with a new job, for the current run only: the task runs again later (a
        worker shutting down hands its task back; a worker whose device failed, or whose run hung, gives
        it up). The run is recorded as ended by `cause` (with `detail`); when that is a loss beyond
        `max_lost`, the task ends Error (ErrorCode 505) instead. None when the run was superseded."""
        ...

    async def runs_of(self, task_uid: str) -> list[domain.RunRecord]:
        """The task's ended runs, first first (empty for an unknown task)."""
        ...


def check_weight(weight: float) -> None:
    """A key's scheduling weight must be a positive number."""
    if not weight > 0 or weight == float("inf"):
        raise ValueError(f"a key's weight must be a number > 0 (got {weight!r})")


def idempotency_conflict(request_uuid: str, task_uid: str) -> errors.IdempotencyConflict:
    """The refusal of a request_uuid reused with other parameters (every implementation words it so)."""
    field, value = domain.RequestId.field_of(request_uuid)
    return errors.IdempotencyConflict(
        f"{field} {value!r} was already used for task {task_uid} with other parameters: a retry "
        f"must resend the same request; a new request needs a new {field}"
    )


def queue_full(max_queued: int) -> errors.ServerBusy:
    """The refusal of a submit while the queue is at its bound (PICSERVE_MAX_QUEUED_TASKS)."""
    return errors.ServerBusy(f"the queue holds {max_queued} tasks already; retry later")


def too_many_open_tasks(open_count: int, cap: int) -> errors.TooManyOpenTasks:
    """The refusal of a key at its cap of open tasks."""
    return errors.TooManyOpenTasks(
        f"this key has {open_count} open tasks (queued or running) and may have at most {cap}: "
        "retry when one of them has ended (poll ListTasksDetails)"
    )

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
       │                        └──requeue_run(run)──► Queuing   (shutdown: a new job, a new run later)
       └──request_cancel──► Canceled
    Running ──requeue_job──► Queuing   (its worker died; PostgreSQL recovery only)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from picserve import domain

__all__ = ["TaskRepository"]


class TaskRepository(Protocol):
    # --- keys -------------------------------------------------------------------------------
    async def create_key(self, name: str, credits: int) -> domain.Account:
        """A new key pair with `credits` total credits."""
        ...

    async def list_keys(self) -> list[domain.Account]:
        """Every key, oldest first."""
        ...

    async def get_account(self, public_key: str) -> domain.Account | None:
        """The key's account (revoked ones included), or None."""
        ...

    async def revoke_key(self, public_key: str) -> bool:
        """Refuse the key from now on; False when there is no such key."""
        ...

    async def add_credits(self, public_key: str, credits: int) -> bool:
        """Add to the key's total credits; False when there is no such key."""
        ...

    # --- the API side ---------------------------------------------------------------------------
    async def create_task(
        self, task_uid: str, public_key: str, action: str, spec: domain.GenerationSpec, cost: int
    ) -> None:
        """Insert a Queuing task and enqueue its job, atomically.

        Raises InsufficientCredits, writing nothing, when the key's available credits (total − used −
        the cost of its open tasks) are fewer than `cost`. Two concurrent calls never both spend the
        same credits.
        """
        ...

    async def queued_count(self) -> int:
        """Tasks in Queuing, over every key."""
        ...

    async def get_many(self, task_uids: Sequence[str], public_key: str) -> list[domain.TaskRecord]:
        """The tasks among `task_uids` that belong to `public_key`, in no particular order."""
        ...

    async def open_tasks(self, public_key: str) -> list[str]:
        """The key's Queuing and Running tasks, oldest first."""
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
    async def mark_running(self, task_uid: str, worker: str) -> tuple[domain.Run, domain.GenerationSpec] | None:
        """Queuing → Running under a new attempt number; the run and the task's spec, or None when the
        task is not Queuing (cancelled, or taken by another worker)."""
        ...

    async def record_progress(self, run: domain.Run, progress: float) -> bool:
        """The fraction done (0..1) of the run's task; False when `run` is not the task's current run."""
        ...

    async def finish_task(self, run: domain.Run, result_keys: Sequence[str], seeds: Sequence[int]) -> bool:
        """Running → Finished with its results, and its cost charged to its key, in one step; False
        (nothing written, nothing charged) when `run` is not the task's current run."""
        ...

    async def fail_task(self, run: domain.Run, code: int, message: str) -> bool:
        """Running → Error with a task ErrorCode and message, for the current run only."""
        ...

    async def cancel_run(self, run: domain.Run) -> bool:
        """Running → Canceled (ErrorCode 510), for the current run only. Never charged."""
        ...

    async def requeue_run(self, run: domain.Run) -> bool:
        """Running → Queuing with a new job, for the current run only: the task runs again later (a
        worker shutting down hands its task back)."""
        ...

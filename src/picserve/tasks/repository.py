"""The `TaskRepository` protocol: every read and write of keys and tasks, and the queue behind them.

Two implementations pass one contract suite (tests/contract/test_repository.py):
`postgres.PostgresRepository` (tables + procrastinate jobs, in one transaction) and
`memory.InMemoryRepository` (dicts + a procrastinate App on any connector, for tests).

Status changes are guarded: each names the status it expects, and returns False (or None) when the
task is not in it, so two writers racing on one task can never both win.

    Queuing ──mark_running──► Running ──finish_task──► Finished   (charged here, once)
       │                        ├──fail_task──► Error
       └──cancel_task───────────┴──cancel_task──► Canceled
    Running ──requeue──► Queuing   (its worker died; PostgreSQL recovery only)
"""

from __future__ import annotations

from collections.abc import Sequence
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
        task's job is asked to abort (the worker writes Canceled at its next step). No-op otherwise."""
        ...

    # --- the worker side (transitions) -----------------------------------------------------------
    async def mark_running(self, task_uid: str, worker: str) -> domain.GenerationSpec | None:
        """Queuing → Running; the task's spec, or None when it is not Queuing (cancelled, or taken)."""
        ...

    async def record_progress(self, task_uid: str, progress: float) -> None:
        """The fraction done (0..1) of a Running task; ignored for a task in any other status."""
        ...

    async def finish_task(self, task_uid: str, result_keys: Sequence[str], seeds: Sequence[int]) -> bool:
        """Running → Finished with its results, and its cost charged to its key, in one step."""
        ...

    async def fail_task(self, task_uid: str, code: int, message: str) -> bool:
        """Queuing or Running → Error with a task ErrorCode and message."""
        ...

    async def cancel_task(self, task_uid: str) -> bool:
        """Queuing or Running → Canceled (ErrorCode 510). Never charged."""
        ...

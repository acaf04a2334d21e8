"""TaskService: what the API asks of the task store and the queue."""

from __future__ import annotations

import math
from collections.abc import Sequence

from picserve import domain, errors
from picserve.tasks import database, xid

__all__ = ["TaskService", "cost_of"]


def cost_of(spec: domain.GenerationSpec, divisor: int) -> int:
    """Credits a generation costs: pixels × steps × images / divisor, at least 1."""
    return max(1, math.ceil(spec.width * spec.height * spec.steps * spec.batch_size / divisor))


class TaskService:
    def __init__(self, db: database.Database, credit_divisor: int, max_queued: int):
        self.db = db
        self.repo = db.repo
        self.credit_divisor = credit_divisor
        self.max_queued = max_queued

    async def submit(self, account: domain.Account, action: str, spec: domain.GenerationSpec) -> str:
        """Insert the task row and defer its job in one transaction: an accepted TaskUID is durable."""
        if await self.repo.queued_count() >= self.max_queued:
            raise errors.ServerBusy(f"the queue holds {self.max_queued} tasks already; retry later")
        cost = cost_of(spec, self.credit_divisor)
        task_uid = xid.new_xid()
        async with self.db.pool.connection() as conn:
            async with conn.transaction():
                available = await self.repo.lock_balance(conn, account.public_key)
                if available < cost:
                    raise errors.InsufficientCredits(
                        f"this request costs {cost} credits and {max(available, 0)} are available"
                    )
                await self.repo.insert_task(conn, task_uid, account.public_key, action, spec, cost)
                job_id = await self.db.run_generation.configure(connection=conn).defer_async(task_uid=task_uid)
                await self.repo.set_job(conn, task_uid, job_id)
        return task_uid

    async def get_many(self, account: domain.Account, task_uids: Sequence[str]) -> list[domain.TaskRecord]:
        """The caller's tasks in the order asked; TaskNotFound names the first that is not theirs."""
        found = {t.task_uid: t for t in await self.repo.get_many(task_uids, account.public_key)}
        missing = [uid for uid in task_uids if uid not in found]
        if missing:
            raise errors.TaskNotFound(f"TaskUIDList: task {missing[0]!r} not found")
        return [found[uid] for uid in task_uids]

    async def running(self, account: domain.Account) -> list[str]:
        return await self.repo.running(account.public_key)

    async def cancel(self, account: domain.Account, task_uids: Sequence[str]) -> None:
        """Queued tasks stop at once; running ones at their next denoising step."""
        for task in await self.get_many(account, task_uids):
            if task.status is domain.TaskStatus.QUEUING and await self.repo.cancel_task(task.task_uid):
                await self._cancel_job(task.task_uid, abort=False)
            elif task.status is domain.TaskStatus.RUNNING:
                await self._cancel_job(task.task_uid, abort=True)

    async def _cancel_job(self, task_uid: str, abort: bool) -> None:
        job_id = await self.repo.job_id(task_uid)
        if job_id is not None:
            await self.db.app.job_manager.cancel_job_by_id_async(job_id, abort=abort)

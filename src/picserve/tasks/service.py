"""TaskService: the rules the API applies to tasks (cost, queue bound, ownership), on any repository."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from picserve import domain, errors
from picserve.storage.base import Store
from picserve.tasks import references, xid
from picserve.tasks.repository import TaskRepository

__all__ = ["TaskService"]

log = logging.getLogger(__name__)


class TaskService:
    def __init__(
        self, repo: TaskRepository, store: Store, credit_divisor: int, max_queued: int, max_open_tasks: int = 0
    ) -> None:
        self.repo = repo
        #: where a task's reference images wait while it is queued
        self.store = store
        self.credit_divisor = credit_divisor
        self.max_queued = max_queued
        #: open tasks a key may have unless it has its own cap; 0 = no cap
        self.max_open_tasks = max_open_tasks

    async def find_repeat(self, account: domain.Account, request: domain.RequestId | None) -> str | None:
        """The TaskUID already made for `request` (a client's resend), or None; IdempotencyConflict
        when its request_uuid was used with other parameters. Checked before any work on the request."""
        return None if request is None else await self.repo.find_request(account.public_key, request)

    async def before_submit(
        self, account: domain.Account, request: domain.RequestId | None, live_after: float | None
    ) -> tuple[str | None, list[tuple[str, int]]]:
        """`find_repeat` and, with `live_after`, the live workers' memory (for the admission check),
        in one read."""
        return await self.repo.before_submit(account.public_key, request, live_after)

    async def submit(
        self,
        account: domain.Account,
        action: str,
        spec: domain.ActionSpec,
        request: domain.RequestId | None = None,
        webhook: domain.Webhook | None = None,
    ) -> str:
        """Queue a task for `spec`; its TaskUID is durable once this returns. A resend of `request`
        gets the first TaskUID back, without a second task or charge. Its events go to `webhook`."""
        cap = account.max_open_tasks if account.max_open_tasks is not None else self.max_open_tasks
        task_uid = xid.new_xid()
        stashed = await asyncio.to_thread(references.stash, spec, self.store) if references.carried(spec) else spec
        try:
            created = await self.repo.create_task(
                task_uid,
                account.public_key,
                action,
                stashed,
                spec.cost(self.credit_divisor),
                max_open_tasks=cap,
                max_queued=self.max_queued,  # checked in create_task's one statement
                request=request,
                webhook=webhook,
            )
        except BaseException:
            await asyncio.to_thread(references.drop, stashed, self.store)
            raise
        if created != task_uid:  # a resend that raced its first copy: that one's task stands
            await asyncio.to_thread(references.drop, stashed, self.store)
        else:
            log.info("task %s queued", created, extra={"task_uid": created, "model": spec.needs().model_code})
        return created

    async def get_many(self, account: domain.Account, task_uids: Sequence[str]) -> list[domain.TaskRecord]:
        """The caller's tasks in the order asked; TaskNotFound names the first that is not theirs."""
        found = {t.task_uid: t for t in await self.repo.get_many(task_uids, account.public_key)}
        missing = [uid for uid in task_uids if uid not in found]
        if missing:
            raise errors.TaskNotFound(f"TaskUIDList: task {missing[0]!r} not found")
        return [found[uid] for uid in task_uids]

    async def details(
        self, account: domain.Account, task_uids: Sequence[str]
    ) -> list[tuple[domain.TaskRecord, int | None]]:
        """`get_many`, each task with its queue position (None unless queued), in one read."""
        details = await self.repo.get_details(task_uids, account.public_key)
        found = {task.task_uid: (task, position) for task, position in details}
        missing = [uid for uid in task_uids if uid not in found]
        if missing:
            raise errors.TaskNotFound(f"TaskUIDList: task {missing[0]!r} not found")
        return [found[uid] for uid in task_uids]

    async def open_tasks(self, account: domain.Account) -> list[str]:
        return await self.repo.open_tasks(account.public_key)

    async def cancel(self, account: domain.Account, task_uids: Sequence[str]) -> None:
        """Queued tasks stop at once; running ones at their next denoising step."""
        for task in await self.get_many(account, task_uids):
            if not task.status.is_terminal:
                await self.repo.request_cancel(task.task_uid)

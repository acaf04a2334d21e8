"""ListTasksDetails: TaskRecord → PICPIK TaskDetail (plus Progress, SeedList, Warnings)."""

from __future__ import annotations

from typing import Any

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.protocol.task_detail import task_detail
from picserve.services import Services

__all__ = ["handle"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    request = messages.parse(messages.ListTasksDetails, envelope.params)
    tasks = await services.tasks.get_many(account, request.TaskUIDList)
    queued = [t.task_uid for t in tasks if t.status is domain.TaskStatus.QUEUING]
    positions = await services.repo.queue_positions(queued) if queued else {}
    return {
        "TaskDetailList": [
            task_detail(t, lambda key: services.result_url(key, base_url), positions.get(t.task_uid)) for t in tasks
        ]
    }

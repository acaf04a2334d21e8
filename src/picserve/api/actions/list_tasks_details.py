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
    tasks = await services.tasks.details(account, request.TaskUIDList)  # one statement

    def url_of(key: str) -> str:
        return services.result_url(key, base_url)

    return {"TaskDetailList": [task_detail(task, url_of, position) for task, position in tasks]}

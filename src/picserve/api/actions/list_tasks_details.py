"""ListTasksDetails: TaskRecord → PICPIK TaskDetail (plus Progress, SeedList, Warnings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from picserve import domain
from picserve.api.services import Services
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope

__all__ = ["handle", "task_detail"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    request = messages.parse(messages.ListTasksDetails, envelope.params)
    tasks = await services.tasks.get_many(account, request.TaskUIDList)
    return {"TaskDetailList": [task_detail(t, lambda key: services.result_url(key, base_url)) for t in tasks]}


def task_detail(task: domain.TaskRecord, url_of: Callable[[str], str]) -> dict[str, Any]:
    finished = task.status is domain.TaskStatus.FINISHED
    return messages.TaskDetail(
        TaskUID=task.task_uid,
        Action=task.action,
        Status=task.status.value,
        ImgList=[url_of(k) for k in task.result_keys],
        Seed=task.spec.seed,
        ConsumeApiPoint=task.cost if finished else 0,
        ErrorCode=task.error_code,
        ErrorMassage=task.error_message,
        Progress=round(task.progress, 4),
        SeedList=list(task.seeds or task.spec.seeds),
        Warnings=list(task.spec.warnings),
        Prompt=task.spec.prompt,
        NegativePrompt=task.spec.negative_prompt,
        OriginalPrompt=task.spec.original_prompt if task.spec.original_prompt is not None else task.spec.prompt,
        OriginalNegativePrompt=(
            task.spec.original_negative_prompt
            if task.spec.original_negative_prompt is not None
            else task.spec.negative_prompt
        ),
    ).model_dump()

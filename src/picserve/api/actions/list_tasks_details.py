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
    queued = [t.task_uid for t in tasks if t.status is domain.TaskStatus.QUEUING]
    positions = await services.repo.queue_positions(queued) if queued else {}
    return {
        "TaskDetailList": [
            task_detail(t, lambda key: services.result_url(key, base_url), positions.get(t.task_uid)) for t in tasks
        ]
    }


def task_detail(
    task: domain.TaskRecord, url_of: Callable[[str], str], queue_position: int | None = None
) -> dict[str, Any]:
    """A task as PICPIK's TaskDetail, with picserve's extensions; `QueuePosition` and `PreviewImage`
    are present only while they mean something (queued; running with a preview)."""
    finished = task.status is domain.TaskStatus.FINISHED
    preview = task.preview if task.status is domain.TaskStatus.RUNNING else None  # absent, not null, otherwise
    extras = {"PreviewImage": preview, "QueuePosition": queue_position}
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
        PreviewImage=preview,
        QueuePosition=queue_position,
    ).model_dump(exclude={name for name, value in extras.items() if value is None})

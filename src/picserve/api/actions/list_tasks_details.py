"""ListTasksDetails: TaskRecord → PICPIK TaskDetail (plus Progress, SeedList, Warnings)."""

from __future__ import annotations

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope

__all__ = ["handle", "task_detail"]


async def handle(ctx, account: domain.Account, envelope: Envelope, base_url: str) -> dict:
    request = messages.parse(messages.ListTasksDetails, envelope.params)
    tasks = await ctx.tasks.get_many(account, request.TaskUIDList)
    return {"TaskDetailList": [task_detail(t, lambda key: ctx.result_url(key, base_url)) for t in tasks]}


def task_detail(task: domain.TaskRecord, url_of) -> dict:
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

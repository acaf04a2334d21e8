"""A task as PICPIK's TaskDetail: what ListTasksDetails answers and what a webhook posts.

It sits in protocol/ (the wire), below both of its users (api/ and webhooks/), so neither imports the
other for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from picserve import domain
from picserve.protocol import messages

__all__ = ["task_detail"]


def task_detail(
    task: domain.TaskRecord, url_of: Callable[[str], str], queue_position: int | None = None
) -> dict[str, Any]:
    """A task as PICPIK's TaskDetail, with picserve's extensions; `QueuePosition` and `PreviewImage`
    are present only while they mean something (queued; running with a preview). A generation also
    reports its seeds, warnings and prompts; a task of another kind leaves them empty."""
    finished = task.status is domain.TaskStatus.FINISHED
    preview = task.preview if task.status is domain.TaskStatus.RUNNING else None  # absent, not null, otherwise
    extras = {"PreviewImage": preview, "QueuePosition": queue_position}
    spec = task.spec
    generation: dict[str, Any] = {}
    if isinstance(spec, domain.GenerationSpec):
        generation = {
            "Seed": spec.seed,
            "SeedList": list(task.seeds or spec.seeds),
            "Warnings": list(spec.warnings),
            "Prompt": spec.prompt,
            "NegativePrompt": spec.negative_prompt,
            "OriginalPrompt": spec.original_prompt if spec.original_prompt is not None else spec.prompt,
            "OriginalNegativePrompt": (
                spec.original_negative_prompt if spec.original_negative_prompt is not None else spec.negative_prompt
            ),
        }
    return messages.TaskDetail(
        TaskUID=task.task_uid,
        Action=task.action,
        Status=task.status.value,
        ImgList=[url_of(k) for k in task.result_keys],
        TxtList=list(task.result_texts),
        ConsumeApiPoint=task.cost if finished else 0,
        ErrorCode=task.error_code,
        ErrorMassage=task.error_message,
        Progress=round(task.progress, 4),
        PreviewImage=preview,
        QueuePosition=queue_position,
        **generation,
    ).model_dump(exclude={name for name, value in extras.items() if value is None})

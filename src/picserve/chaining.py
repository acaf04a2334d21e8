"""Chaining by TaskUID (a picserve extension): an image field that names an earlier task's result.

Wherever an action takes a base64 image, a client may send `task:<TaskUID>/<index>` instead: the
index-th result (0-based) of a Finished task of the same key. A client upscales or cuts out a generated
image without downloading and uploading it again; the task gets exactly the bytes a download would
have given (the stored PNG, its `parameters` text included), so a chained request and the same request
with the bytes uploaded run alike.

It runs in `submission.submit` after the wire message is decoded and before the spec is made: the
spec's checks then see an ordinary base64 image. A reference that does not resolve is refused there,
naming the field: another key's or an unknown task (TaskNotFound, as ListTasksDetails would say), one
not Finished, an index out of range, a result expired from the store. An unchanged PICPIK client never
sends `task:`, and nothing else about its request changes.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any, TypeGuard, TypeVar

from pydantic import BaseModel

from picserve import domain, errors
from picserve.services import Services

__all__ = ["PREFIX", "is_reference", "resolve"]

PREFIX = "task:"
_REFERENCE = re.compile(r"task:([0-9A-Za-z_-]{1,64})/([0-9]{1,6})")
_M = TypeVar("_M", bound=BaseModel)


def is_reference(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith(PREFIX)


async def resolve(services: Services, account: domain.Account, message: _M, fields: tuple[str, ...]) -> _M:
    """`message` with every `task:` reference in `fields` (a string field or a list of strings)
    replaced by the base64 of the result it names; the message itself when there are none."""
    changes: dict[str, Any] = {}
    for name in fields:
        value = getattr(message, name, None)
        if is_reference(value):
            changes[name] = await _image(services, account, value, name)
        elif isinstance(value, list) and any(is_reference(item) for item in value):
            changes[name] = [
                await _image(services, account, item, f"{name}[{i}]") if is_reference(item) else item
                for i, item in enumerate(value)
            ]
    return message.model_copy(update=changes) if changes else message


async def _image(services: Services, account: domain.Account, reference: str, field: str) -> str:
    found = _REFERENCE.fullmatch(reference)
    if found is None:
        raise errors.ParamError(
            f"{field}: {reference[:80]!r} is not a task reference; write task:<TaskUID>/<index> "
            "(the index-th image of a finished task of this key, from 0)"
        )
    task_uid, index = found.group(1), int(found.group(2))
    tasks = await services.repo.get_many([task_uid], account.public_key)
    if not tasks:
        raise errors.TaskNotFound(f"{field}: task {task_uid!r} not found (a reference names a task of this key)")
    task = tasks[0]
    if task.status is not domain.TaskStatus.FINISHED:
        raise errors.ParamError(
            f"{field}: task {task_uid} is {task.status.value}; a reference names a Finished task's result"
        )
    if index >= len(task.result_keys):
        raise errors.ParamError(
            f"{field}: task {task_uid} has {len(task.result_keys)} result image(s) "
            f"(indexes 0..{len(task.result_keys) - 1}); got index {index}"
        )
    data = await asyncio.to_thread(services.store.get, task.result_keys[index])
    if data is None:
        raise errors.ParamError(
            f"{field}: image {index} of task {task_uid} is no longer stored (results are kept "
            f"{services.settings.result_ttl_seconds // 3600} h); send the image itself"
        )
    return base64.b64encode(data).decode()

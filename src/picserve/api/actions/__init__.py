"""ACTIONS: the dispatch table from PICPIK Action names to their handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from picserve import domain, submission
from picserve.api.actions import (
    cancel_task,
    get_credit_balance,
    list_controlnets,
    list_models,
    list_running_tasks,
    list_tasks_details,
    make_task,
)
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["ACTIONS", "Handler"]

#: handle(services, account, envelope, base_url) → the reply's own fields
Handler = Callable[[Services, domain.Account, Envelope, str], Awaitable[dict[str, Any]]]

ACTIONS: dict[str, Handler] = {
    "CancelTask": cancel_task.handle,
    "GetCreditBalance": get_credit_balance.handle,
    "ListControlNets": list_controlnets.handle,
    "ListModels": list_models.handle,
    "ListRunningTasks": list_running_tasks.handle,
    "ListTasksDetails": list_tasks_details.handle,
    # GenerateImagesSDXL, ResizeImage, RemoveBackground, RemoveBackgroundsInBatch: one handler
    **dict.fromkeys(submission.KINDS, make_task.handle),
}

"""ACTIONS: the dispatch table from PICPIK Action names to their handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from picserve import domain
from picserve.api.actions import (
    cancel_task,
    generate_images_sdxl,
    get_credit_balance,
    list_models,
    list_running_tasks,
    list_tasks_details,
)
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["ACTIONS", "Handler"]

#: handle(services, account, envelope, base_url) → the reply's own fields
Handler = Callable[[Services, domain.Account, Envelope, str], Awaitable[dict[str, Any]]]

ACTIONS: dict[str, Handler] = {
    "CancelTask": cancel_task.handle,
    "GenerateImagesSDXL": generate_images_sdxl.handle,
    "GetCreditBalance": get_credit_balance.handle,
    "ListModels": list_models.handle,
    "ListRunningTasks": list_running_tasks.handle,
    "ListTasksDetails": list_tasks_details.handle,
}

"""CancelTask (picserve extension): queued tasks stop at once, running ones at their next step."""

from __future__ import annotations

from typing import Any

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["handle"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    request = messages.parse(messages.CancelTask, envelope.params)
    await services.tasks.cancel(account, request.TaskUIDList)
    return {}

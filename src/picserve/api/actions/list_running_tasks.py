"""ListRunningTasks: the caller's Queuing and Running tasks, oldest first."""

from __future__ import annotations

from typing import Any

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["handle"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    messages.parse(messages.Empty, envelope.params)
    return {"TaskUIDList": await services.tasks.open_tasks(account)}

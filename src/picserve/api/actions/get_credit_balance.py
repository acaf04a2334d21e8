"""GetCreditBalance: the caller's total and used credits (and when the key expires, if it does)."""

from __future__ import annotations

from typing import Any

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["handle"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    messages.parse(messages.Empty, envelope.params)
    reply: dict[str, Any] = {"TotalCredits": account.total_credits, "UsedCredits": account.used_credits}
    if account.expire_at is not None:
        reply["ExpireTimestamp"] = int(account.expire_at.timestamp())
    return reply

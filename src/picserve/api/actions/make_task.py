"""Every Action that makes a task (GenerateImagesSDXL, ResizeImage, RemoveBackground, …): the signed
request → submission.submit → TaskUID. The checks of each are its kind's (specs/, by submission.KINDS)."""

from __future__ import annotations

from typing import Any

from picserve import domain, submission
from picserve.api import idempotency
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["handle"]


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    request = idempotency.request_id(envelope, services.settings.idempotency_window)
    return {"TaskUID": await submission.submit(services, account, envelope.action, envelope.params, request)}

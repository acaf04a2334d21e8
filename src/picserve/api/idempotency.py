"""Idempotent submits: which resend of a generation request is the same request.

PICPIK clients send a `request_uuid` with every call, and the signature covers it. A client that times
out and resends the same signed request (same key, same request_uuid, same parameters) within the
window gets the first request's TaskUID back and is charged once, as cog's idempotent prediction ids
and Stripe's idempotency keys do; the same request_uuid with other parameters is refused (162). Since
PICPIK's signature has no timestamp, this also makes a replayed request harmless within the window.

"Same parameters" is what the signature covers: the request's fields (Signature aside) encoded as the
signature encodes them, so two requests count as the same exactly when one signature would sign both.
"""

from __future__ import annotations

import hashlib

from picserve import domain
from picserve.protocol import signature
from picserve.protocol.envelope import Envelope

__all__ = ["fingerprint", "request_id"]

#: fields left out of the fingerprint: the signature itself and what names the request, not its content
_NOT_PARAMETERS = ("Signature", "request_uuid")


def fingerprint(envelope: Envelope) -> str:
    """SHA-256 of the request's signed content (Action and parameters), request_uuid aside."""
    content = {k: v for k, v in envelope.body.items() if k not in _NOT_PARAMETERS}
    return hashlib.sha256(signature.string_to_sign(content).encode("utf-8")).hexdigest()


def request_id(envelope: Envelope, window: float) -> domain.RequestId | None:
    """The idempotency identity of `envelope`, or None when it has no request_uuid (nothing to match)."""
    if not envelope.request_uuid:
        return None
    return domain.RequestId(envelope.request_uuid, fingerprint(envelope), window)

"""Idempotent submits: which resend of a request that makes a task is the same request.

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
import json
from collections.abc import Mapping
from typing import Any

from picserve import domain, errors
from picserve.protocol import signature
from picserve.protocol.envelope import Envelope

__all__ = ["MAX_KEY_CHARS", "fingerprint", "for_key", "request_id"]

#: the longest Idempotency-Key header taken (Stripe's limit)
MAX_KEY_CHARS = 255

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


def for_key(key: str, route: str, params: Mapping[str, Any], window: float) -> domain.RequestId:
    """The idempotency identity of an OpenAI-style request: its `Idempotency-Key` header (the
    convention of OpenAI's and Stripe's clients) and a fingerprint of the route and the parameters it
    means. Its ids live apart from PICPIK's request_uuids of the same key (a prefix)."""
    if not 0 < len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise errors.ParamError(
            f"Idempotency-Key: must be 1 to {MAX_KEY_CHARS} printable ASCII characters (got {len(key)} characters)"
        )
    content = json.dumps({"route": route, "params": params}, sort_keys=True, separators=(",", ":"))
    return domain.RequestId(
        domain.RequestId.HEADER_PREFIX + key, hashlib.sha256(content.encode("utf-8")).hexdigest(), window
    )

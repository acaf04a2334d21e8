"""The signature of a delivery, and the headers that carry it.

`X-Picserve-Signature: sha256=<hex>`: HMAC-SHA256, keyed with the key's private key (its UTF-8
bytes), of `<X-Picserve-Timestamp>.` followed by the body's bytes exactly as sent. A receiver
recomputes it over the raw body, compares in constant time and refuses old timestamps (`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["DEFAULT_TOLERANCE", "headers", "signature", "verify"]

#: seconds a receiver should accept a timestamp away from its clock
DEFAULT_TOLERANCE = 300


def signature(private_key: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with private_key>`."""
    digest = hmac.new(private_key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def headers(
    private_key: str, event: str, delivery_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """A delivery's headers (timestamp: now, in whole seconds since the epoch)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "User-Agent": "picserve-webhooks",
        "X-Picserve-Event": event,
        "X-Picserve-Delivery": delivery_id,
        "X-Picserve-Timestamp": stamp,
        "X-Picserve-Signature": signature(private_key, stamp, body),
    }


def verify(
    private_key: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches (constant-time) and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(signature(private_key, timestamp, body), signature_header)

"""The signature of a delivery, and the headers that carry it.

Standard Webhooks (https://www.standardwebhooks.com, as Replicate, Svix and OpenAI send them):

- `webhook-id`: the delivery id, the same on every retry of one delivery (dedupe on it);
- `webhook-timestamp`: whole seconds since the epoch, when this attempt was sent;
- `webhook-signature: v1,<base64 of HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`, the
  body's bytes exactly as sent, keyed with the bytes of the key's webhook secret.

The webhook secret (`standard_secret`) is `whsec_` + the standard base64 of 32 bytes derived from the
key's private key: HMAC-SHA256 keyed with the private key's UTF-8 bytes, of `SECRET_LABEL`. The key's
owner (who knows the private key) can derive it; a receiver that holds it can check deliveries but
cannot get the private key back from it, so it cannot sign API requests or spend the key's credits.

Deprecated, sent beside them for one release and removed in the next: `X-Picserve-Delivery` (= the
`webhook-id`), `X-Picserve-Timestamp` (= the `webhook-timestamp`) and `X-Picserve-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with the private key's UTF-8 bytes>` (`verify`).
`X-Picserve-Event` stays: the standard has no event header (its payloads carry their type), and a
receiver can route on it before parsing the body.

A receiver recomputes the signature over the raw body, compares in constant time and refuses
timestamps more than `DEFAULT_TOLERANCE` seconds from its clock (`verify_standard`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_LABEL",
    "SECRET_PREFIX",
    "headers",
    "signature",
    "standard_secret",
    "standard_signature",
    "verify",
    "verify_standard",
]

#: seconds a receiver should accept a timestamp away from its clock (the standard's 5 minutes)
DEFAULT_TOLERANCE = 300
#: the message the webhook secret's bytes are the HMAC-SHA256 of, keyed with the private key
SECRET_LABEL = b"picserve webhook secret v1"
#: how a Standard Webhooks secret starts
SECRET_PREFIX = "whsec_"


def standard_secret(private_key: str) -> str:
    """The key's webhook secret, as a Standard Webhooks receiver configures it: `whsec_<base64>`."""
    key = hmac.new(private_key.encode(), SECRET_LABEL, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def standard_signature(secret: str, delivery_id: str, timestamp: int | str, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "<delivery_id>.<timestamp>.<body>">`, keyed with the bytes of
    `secret` (`whsec_<base64>`, or the base64 alone). A secret that is not base64, or is empty:
    ValueError."""
    key = base64.b64decode(secret.strip().removeprefix(SECRET_PREFIX), validate=True)
    if not key:
        raise ValueError("the webhook secret is empty")
    digest = hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def signature(private_key: str, timestamp: int | str, body: bytes) -> str:
    """Deprecated (`X-Picserve-Signature`): `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed
    with private_key>`."""
    digest = hmac.new(private_key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def headers(
    private_key: str, event: str, delivery_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """A delivery's headers (timestamp: now, in whole seconds since the epoch): the standard ones, the
    event, and the deprecated X-Picserve-* ones."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "User-Agent": "picserve-webhooks",
        "webhook-id": delivery_id,
        "webhook-timestamp": stamp,
        "webhook-signature": standard_signature(standard_secret(private_key), delivery_id, stamp, body),
        "X-Picserve-Event": event,
        "X-Picserve-Delivery": delivery_id,
        "X-Picserve-Timestamp": stamp,
        "X-Picserve-Signature": signature(private_key, stamp, body),
    }


def verify_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver does with the standard headers (any case) and its `whsec_` secret: one of the
    space-separated signatures matches (constant-time) and the timestamp is recent."""
    sent = {name.lower(): value for name, value in headers.items()}
    delivery_id, timestamp = sent.get("webhook-id", ""), sent.get("webhook-timestamp", "")
    if not (delivery_id and _recent(timestamp, tolerance, now)):
        return False
    try:
        expected = standard_signature(secret, delivery_id, timestamp, body)
    except ValueError:  # not a base64 secret, or an empty one: nothing can match
        return False
    return _matches(expected, sent.get("webhook-signature", "").split(" "))


def verify(
    private_key: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Deprecated (the X-Picserve-* headers): the signature matches (constant-time) and the timestamp
    is recent."""
    return _recent(timestamp, tolerance, now) and _matches(signature(private_key, timestamp, body), [signature_header])


def _recent(timestamp: str, tolerance: float, now: float | None) -> bool:
    """`timestamp` is whole seconds since the epoch, at most `tolerance` seconds from `now` (the clock)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    return abs((time.time() if now is None else now) - sent) <= tolerance


def _matches(expected: str, given: Iterable[str]) -> bool:
    """One of `given` is `expected`, each compared in constant time (as bytes: a header may hold any
    character)."""
    return any(hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in given)

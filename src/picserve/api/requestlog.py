"""The server log's line per API request: what an operator reads to learn what happened.

- Every refused request, once: at warning level when the caller could not be authenticated or ran into
  its key's limits (a wrong key, a bad signature, a rate limit: an operator may have to act), at info
  level otherwise (a caller's mistake that its own reply explains). The line holds the action, the
  PublicKey's first characters, the RetCode and the message sent back.
- Every accepted request at debug level: polls and submits come many per task and tell nothing new.

Never the PrivateKey, the Signature or an AuthToken (ImportModel's): a value the request sent under
one of these names is blanked out of the message, should a refusal quote it. uvicorn's access lines,
the other per-request log, are off unless asked for (`picserve serve --access-log`, or
PICSERVE_LOG_LEVEL=debug).
"""

from __future__ import annotations

import logging
from typing import Any

from picserve import errors

__all__ = ["KEY_SHOWN", "accepted", "key_prefix", "printable", "refused", "refused_http", "secrets_of"]

log = logging.getLogger("picserve.api.requests")

#: the characters of a PublicKey a log line shows
KEY_SHOWN = 8

#: refusals an operator may have to act on (keys, signatures, limits): logged at warning level
_WARNED = (errors.AuthError, errors.RateLimited, errors.TooManyOpenTasks, errors.InsufficientCredits)

#: fields whose values never reach the log
_SECRET_FIELDS = ("Signature", "PrivateKey", "AuthToken")


def printable(text: str) -> str:
    """`text` with what is not printable escaped: a caller's string never makes a log line of its own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def key_prefix(public_key: Any) -> str:
    """A PublicKey's first characters for a log line (`-` when the request had none)."""
    if not isinstance(public_key, str) or not public_key.strip():
        return "-"
    shown = public_key.strip()
    return printable(shown if len(shown) <= KEY_SHOWN else f"{shown[:KEY_SHOWN]}…")


def _blanked(message: str, secrets: tuple[Any, ...]) -> str:
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4:
            message = message.replace(secret, "<redacted>")
    return printable(message)


def refused(action: str, public_key: Any, exc: errors.PicserveError, secrets: tuple[Any, ...] = ()) -> None:
    """Log a refused request once: action, key prefix, RetCode, message (secrets blanked out)."""
    message = _blanked(exc.message, secrets)
    level = logging.WARNING if isinstance(exc, _WARNED) else logging.INFO
    log.log(
        level,
        "refused %s from key %s: RetCode %d: %s",
        printable(action) or "(no Action)",
        key_prefix(public_key),
        exc.ret_code,
        message,
        extra={"action": action or None, "ret_code": exc.ret_code},
    )


def refused_http(route: str, public_key: Any, status: int, message: str, secrets: tuple[Any, ...] = ()) -> None:
    """Log a refusal that has an HTTP status and no RetCode (the OpenAI-compatible routes' own)."""
    log.info(
        "refused %s from key %s: HTTP %d: %s",
        printable(route),
        key_prefix(public_key),
        status,
        _blanked(message, secrets),
        extra={"action": route},
    )


def accepted(action: str, public_key: Any, detail: str = "") -> None:
    """Log an accepted request at debug level."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s from key %s: RetCode 0%s",
            action,
            key_prefix(public_key),
            f" ({detail})" if detail else "",
            extra={"action": action, "ret_code": 0},
        )


def secrets_of(body: Any) -> tuple[Any, ...]:
    """The values a request body sent under the secret field names."""
    if not isinstance(body, dict):
        return ()
    return tuple(body.get(name) for name in _SECRET_FIELDS)

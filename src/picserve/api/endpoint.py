"""The one PICPIK endpoint. This is the only place where an exception becomes a RetCode.

The body is read within bounds: a `Content-Length` over `Settings.max_body_bytes` is refused before a
byte of the body is read, and a body without one (chunked) is read until it passes the limit, no
further. Either way the refusal is an ordinary reply (HTTP 200, RetCode 160); the server (uvicorn)
then reads and discards whatever the client still sends, so a client that writes its whole body before
reading gets the reply too, and nothing of that body is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeGuard

from fastapi import Request
from fastapi.responses import JSONResponse

from picserve import errors, logs, metrics
from picserve.api import auth, requestlog
from picserve.api.actions import ACTIONS
from picserve.protocol import envelope as envelope_module
from picserve.protocol.envelope import Envelope, error_reply, ok_reply
from picserve.services import Services

__all__ = ["handle"]

log = logging.getLogger(__name__)


async def handle(services: Services, request: Request) -> JSONResponse:
    """Parse → authenticate → dispatch → reply. Always HTTP 200; failures carry a non-zero RetCode."""
    started = time.perf_counter()
    action: str = ""
    request_uuid: str | None = None
    body: Any = None
    try:
        body = await _read_json(request, services.settings.max_body_bytes)
        if isinstance(body, dict):  # echo what we can, even when the rest is invalid
            given_action, given_uuid = body.get("Action"), body.get("request_uuid")
            action = given_action if _echoable(given_action) else ""
            request_uuid = given_uuid if _echoable(given_uuid) else None
        envelope = Envelope.parse(body)
        handler = ACTIONS.get(envelope.action)
        if handler is None:
            raise errors.UnknownAction(
                f"Action {envelope.action!r} is not served here; available: {', '.join(sorted(ACTIONS))}"
            )
        account = await auth.authenticate(services.repo, envelope, services.settings.max_requests_per_minute)
        logs.bind(key=account.public_key)  # on this request's log lines (JSON logs)
        fields = await handler(services, account, envelope, str(request.base_url))
        requestlog.accepted(action, account.public_key, f"TaskUID {fields['TaskUID']}" if "TaskUID" in fields else "")
        return _replied(action, started, ok_reply(action, request_uuid, fields))
    except errors.PicserveError as exc:
        public_key = body.get("PublicKey") if isinstance(body, dict) else None
        requestlog.refused(action, public_key, exc, requestlog.secrets_of(body))
        return _replied(action, started, error_reply(action, request_uuid, exc))
    except Exception:  # a bug of ours: logged with its traceback, answered without it
        log.exception("unhandled error in %s", action or "request")
        internal = errors.PicserveError("internal server error")
        return _replied(action, started, error_reply(action, request_uuid, internal))


def _replied(action: str, started: float, reply: dict[str, Any]) -> JSONResponse:
    """The reply, counted in the metrics by Action (a client's Action string becomes a label only
    when it names a served Action: clients cannot add series) and RetCode."""
    response = JSONResponse(reply)
    metrics.observe_request(action if action in ACTIONS else "", reply["RetCode"], time.perf_counter() - started)
    return response


def _echoable(value: Any) -> TypeGuard[str]:
    # decode has already refused NUL and lone surrogates in every string: what is left is bounded here
    return isinstance(value, str) and len(value) <= envelope_module.MAX_KEY_CHARS


#: bodies larger than this are parsed off the event loop
_THREAD_ABOVE = 1024 * 1024


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON values: content type checked, size bounded while reading, then `envelope.decode`."""
    _check_content_type(request.headers.get("content-type"))
    raw = await _read_body(request, limit)
    if len(raw) > _THREAD_ABOVE:
        return await asyncio.to_thread(envelope_module.decode, raw)
    return envelope_module.decode(raw)


def _check_content_type(value: str | None) -> None:
    """JSON, as the spec says; a body sent without a Content-Type is read as JSON too."""
    if value is None or not value.strip():
        return
    media_type, *parameters = (part.strip().lower() for part in value.split(";"))
    charset = next((p.partition("=")[2].strip('"') for p in parameters if p.startswith("charset=")), "utf-8")
    if media_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise errors.ParamError(
            f"Content-Type: must be application/json (UTF-8), got {envelope_module.describe(value[:100])}; "
            "send the header `Content-Type: application/json` (curl: -H 'Content-Type: application/json')"
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """At most `limit` bytes of body, read as the ASGI messages come (so a disconnect is seen as one)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise errors.ParamError(f"Content-Length: must be a number of bytes, got {declared[:40]!r}")
        if len(declared) > 18 or int(declared) > limit:
            raise errors.ParamError(
                f"the request body is {int(declared[:18])}{'…' if len(declared) > 18 else ''} bytes; "
                f"at most {limit} are accepted"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise errors.ParamError("the client went away before its request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.ParamError(f"the request body is more than {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)

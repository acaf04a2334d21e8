"""The one PICPIK endpoint. This is the only place where an exception becomes a RetCode."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from picserve import errors
from picserve.api import auth
from picserve.api.actions import ACTIONS
from picserve.api.services import Services
from picserve.protocol.envelope import Envelope, error_reply, ok_reply

__all__ = ["handle"]

log = logging.getLogger(__name__)


async def handle(services: Services, request: Request) -> JSONResponse:
    """Parse → authenticate → dispatch → reply. Always HTTP 200; failures carry a non-zero RetCode."""
    action: str = ""
    request_uuid: str | None = None
    try:
        body = await _read_json(request, services.settings.max_body_bytes)
        if isinstance(body, dict):  # echo what we can, even when the rest is invalid
            given_action, given_uuid = body.get("Action"), body.get("request_uuid")
            action = given_action if isinstance(given_action, str) else ""
            request_uuid = given_uuid if isinstance(given_uuid, str) else None
        envelope = Envelope.parse(body)
        handler = ACTIONS.get(envelope.action)
        if handler is None:
            raise errors.UnknownAction(
                f"Action {envelope.action!r} is not served here; available: {', '.join(sorted(ACTIONS))}"
            )
        account = await auth.authenticate(services.repo, envelope)
        fields = await handler(services, account, envelope, str(request.base_url))
        return JSONResponse(ok_reply(action, request_uuid, fields))
    except errors.PicserveError as exc:
        return JSONResponse(error_reply(action, request_uuid, exc))
    except Exception:  # a bug of ours: logged with its traceback, answered without it
        log.exception("unhandled error in %s", action or "request")
        return JSONResponse(error_reply(action, request_uuid, errors.PicserveError("internal server error")))


async def _read_json(request: Request, limit: int) -> Any:
    raw = await request.body()
    if len(raw) > limit:
        raise errors.ParamError(f"the request body is {len(raw)} bytes; at most {limit} are accepted")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise errors.ParamError(f"the request body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")

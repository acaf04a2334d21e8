"""The PICPIK envelope: every call is a JSON object with Action, PublicKey, Signature, request_uuid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from picserve import errors

__all__ = ["COMMON_FIELDS", "Envelope", "error_reply", "ok_reply"]

COMMON_FIELDS = ("Action", "PublicKey", "Signature", "request_uuid")


@dataclass(frozen=True)
class Envelope:
    action: str
    public_key: str
    signature: str
    request_uuid: str | None
    #: the whole body as received: the signature covers every field of it
    body: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        """The action's own parameters (the body without the common fields)."""
        return {k: v for k, v in self.body.items() if k not in COMMON_FIELDS}

    @classmethod
    def parse(cls, body: Any) -> Envelope:
        if not isinstance(body, dict):
            raise errors.ParamError("the request body must be a JSON object")
        action = body.get("Action")
        if not isinstance(action, str) or not action:
            raise errors.ParamError('Action: missing; name the operation, e.g. "GenerateImagesSDXL"')
        public_key = body.get("PublicKey")
        if not isinstance(public_key, str) or not public_key:
            raise errors.ParamError("PublicKey: missing; send your account's public key")
        signature = body.get("Signature")
        if not isinstance(signature, str) or not signature:
            raise errors.AuthError("Signature: missing; sign the request with your PrivateKey")
        request_uuid = body.get("request_uuid")
        return cls(
            action=action,
            public_key=public_key,
            signature=signature,
            request_uuid=request_uuid if isinstance(request_uuid, str) else None,
            body=body,
        )


def ok_reply(action: str, request_uuid: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = {"Action": action, "RetCode": 0, "Message": ""}
    if request_uuid is not None:
        reply["request_uuid"] = request_uuid
    reply.update(fields)
    return reply


def error_reply(action: str, request_uuid: str | None, error: errors.PicserveError) -> dict[str, Any]:
    reply: dict[str, Any] = {"Action": action, "RetCode": error.ret_code, "Message": error.message}
    if request_uuid is not None:
        reply["request_uuid"] = request_uuid
    return reply

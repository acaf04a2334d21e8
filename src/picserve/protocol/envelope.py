"""The PICPIK envelope: every call is a JSON object with Action, PublicKey, Signature, request_uuid.

`decode` turns the raw body into JSON values and refuses, with a ParamError, everything a JSON parser
lets through but the rest of the server must never see: invalid UTF-8, duplicate keys, NaN and
Infinity, numbers outside a double's range (Python's json reads `1e400` as infinity), nesting deeper
than MAX_DEPTH, and strings (keys or values, at any depth) holding NUL or a lone surrogate. It runs
before the signature check, which encodes every string to UTF-8, and before anything reaches
PostgreSQL, whose text and jsonb cannot hold NUL.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from picserve import errors

__all__ = [
    "COMMON_FIELDS",
    "MAX_DEPTH",
    "MAX_KEY_CHARS",
    "Envelope",
    "decode",
    "describe",
    "error_reply",
    "ok_reply",
]

COMMON_FIELDS = ("Action", "PublicKey", "Signature", "request_uuid")
#: the deepest nesting of arrays and objects accepted; a PICPIK request needs 4, every JSON value
#: at most MAX_DEPTH deep is also safe for the signature's recursive encoding
MAX_DEPTH = 32
#: the longest Action, PublicKey, Signature and request_uuid accepted (a request_uuid is a 36-character
#: UUID; keys are shorter): none of them is ever echoed or stored at an unbounded length
MAX_KEY_CHARS = 128

#: JSON numbers are doubles: anything beyond their range is refused, integers included
_MAX_NUMBER = sys.float_info.max
#: characters no string of a request may hold: NUL (PostgreSQL text) and lone surrogates (not Unicode)
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")


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
        """The envelope of a decoded body; each common field must be a JSON string (request_uuid may be absent)."""
        if not isinstance(body, dict):
            raise errors.ParamError(f"the request body must be a JSON object, got {describe(body)}")
        action = _string(body, "Action", 'name the operation, e.g. "GenerateImagesSDXL"', errors.ParamError)
        public_key = _string(body, "PublicKey", "send your account's public key", errors.ParamError)
        signature = _string(body, "Signature", "sign the request with your PrivateKey", errors.AuthError)
        request_uuid = body.get("request_uuid")
        if request_uuid is not None:
            _check_string("request_uuid", request_uuid)
        return cls(action=action, public_key=public_key, signature=signature, request_uuid=request_uuid, body=body)


def _string(body: dict[str, Any], name: str, hint: str, missing: type[errors.ClientError]) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise missing(f"{name}: missing; {hint}")
    _check_string(name, value)
    return str(value)


def _check_string(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise errors.ParamError(f"{name}: must be a JSON string, got {describe(value)}")
    if len(value) > MAX_KEY_CHARS:
        raise errors.ParamError(f"{name}: must be at most {MAX_KEY_CHARS} characters (got {len(value)})")


def decode(raw: bytes) -> Any:
    """The JSON value of a request body; ParamError for anything outside strict JSON (see the module doc).

    >>> decode(b'{"Width": 64.0}')
    {'Width': 64.0}
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.ParamError(
            f"the request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise errors.ParamError(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except _Refusal as exc:
        raise errors.ParamError(f"the request body {exc}") from None
    except ValueError as exc:  # JSONDecodeError
        raise errors.ParamError(f"the request body is not valid JSON: {exc}") from None
    # Only a \u escape can put NUL or a surrogate in a string read from valid UTF-8 (a raw control
    # character is already invalid JSON): a body without one skips the scan of its strings.
    _check_values(value, check_text="\\u" in text)
    return value


class _Refusal(ValueError):
    """JSON the parser reads but picserve refuses; the message follows "the request body"."""


def _refuse_constant(name: str) -> Any:
    raise _Refusal(f"holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refusal(f"holds a number out of range, {_clip(text, 24)} (JSON numbers must fit a double)")
    return value


def _bounded_int(text: str) -> int:
    # Checked on the digits first: Python refuses to parse more than 4300 of them, with its own message.
    if len(text) > 310 or abs(value := int(text)) > _MAX_NUMBER:
        raise _Refusal(f"holds a number out of range, {_clip(text, 24)} (JSON numbers must fit a double)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # which key: the first one met again
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refusal(f"has the key {_quoted(key)} twice in one object")
            seen.add(key)
    return value


def _check_values(root: Any, check_text: bool) -> None:
    """Depth and, when `check_text`, every key and string: iterative, so no body can exhaust the stack.

    Only what can fail is stacked (containers, and strings when `check_text`), so an array of 100,000
    numbers costs one pass, not 100,000 field paths; what fails, and which failure is named first, is
    the same as when every value was stacked."""
    checked = (dict, list, str) if check_text else (dict, list)
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if len(path) >= MAX_DEPTH:
                raise errors.ParamError(f"{_path(path)}: nested deeper than {MAX_DEPTH} levels")
            for key, item in value.items():
                if check_text:
                    _check_text(key, path, "the key", key)
                if isinstance(item, checked):
                    stack.append((item, (*path, key)))
        elif isinstance(value, list):
            if len(path) >= MAX_DEPTH:
                raise errors.ParamError(f"{_path(path)}: nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, (*path, i)) for i, item in enumerate(value) if isinstance(item, checked))
        elif check_text and isinstance(value, str):
            _check_text(value, path, "the string")


def _check_text(text: str, path: tuple[str | int, ...], what: str, key: str | None = None) -> None:
    """NUL or a lone surrogate in `text` (the string, or with `key`, the key itself) refused."""
    found = _FORBIDDEN.search(text)
    if found is None:
        return
    char = found.group()
    problem = "a NUL character (\\u0000)" if char == "\x00" else f"a lone surrogate (\\u{ord(char):04x}), not Unicode"
    named = what if key is None else f"{what} {_quoted(key)}"
    raise errors.ParamError(f"{_path(path)}: {named} holds {problem}; every string must be valid Unicode without NUL")


def _path(path: tuple[str | int, ...]) -> str:
    """`MainModel.InferenceParams`, `PositivePrompts[0]`: a field path for a message, printable and short."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{_printable(p)}" for p in path).lstrip(".")
    return _clip(text, 120) if text else "the request body"


def _printable(text: str) -> str:
    return _clip(_FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text), 60)


def _quoted(text: str) -> str:
    return f'"{_printable(text)}"'


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def describe(value: Any) -> str:
    """A JSON value as a message names it: `the string "true"`, `the number 64.5`, `null`, `an array of 3 items`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the bool {'true' if value else 'false'}"
    if isinstance(value, int):
        digits = str(abs(value))
        shown = str(value) if len(digits) <= 24 else f"{'-' if value < 0 else ''}{digits[:12]}… ({len(digits)} digits)"
        return f"the number {shown}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_quoted(value)}"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


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

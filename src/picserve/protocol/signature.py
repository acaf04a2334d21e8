"""PICPIK request signatures: SHA-1 over the sorted, concatenated parameters plus the private key.

The encoding follows the spec (section 2.2): bools lower case, integral floats as integers, other
floats in plain decimal (never exponent form), lists concatenated, maps sorted recursively, null as
the empty string. `verify` also accepts the vendor Python signer's `str(float)` rendering, which
writes tiny floats in exponent form (`1e-05`), so clients built on it are not refused.

What cannot be signed (NaN, infinities, a string with a lone surrogate, which has no UTF-8 form)
raises ValueError in `sign` and fails `verify`; the server refuses such bodies before either runs
(`envelope.decode`).

>>> sign({"Action": "ListModels", "PublicKey": "abcdefg"}, "123456")
'4a20bc1141494035f6aaaad13224c94c5a8bc3a5'
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["encode", "sign", "string_to_sign", "verify"]


def _plain_float(value: float) -> str:
    return format(Decimal(repr(value)), "f")


def _python_float(value: float) -> str:
    return str(value)


def encode(value: Any, float_format: Callable[[float], str] = _plain_float) -> str:
    """Encode one parameter value as the signature string expects it."""
    if type(value) is str:  # the common cases first (a bool is an int, but never of type int)
        return value
    if type(value) is int:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be signed: JSON has no NaN or Infinity")
        if value == int(value):
            return str(int(value))
        return float_format(value)
    if isinstance(value, dict):
        return "".join([k + encode(value[k], float_format) for k in sorted(value)])
    if isinstance(value, (list, tuple)):
        return "".join([encode(v, float_format) for v in value])
    return str(value)


def string_to_sign(params: dict[str, Any], float_format: Callable[[float], str] = _plain_float) -> str:
    """The concatenated `key + encode(value)` string, without the private key."""
    return "".join(k + encode(params[k], float_format) for k in sorted(params) if k != "Signature")


def sign(params: dict[str, Any], private_key: str) -> str:
    """The lowercase hex SHA-1 signature of `params` (any `Signature` key is ignored)."""
    return hashlib.sha1((string_to_sign(params) + private_key).encode("utf-8")).hexdigest()


def verify(params: dict[str, Any], private_key: str) -> bool:
    """Whether `params["Signature"]` signs `params` with `private_key`."""
    given = params.get("Signature")
    # compare_digest raises TypeError on non-ASCII text: such a signature is no hex digest anyway
    if not isinstance(given, str) or not given or not given.isascii():
        return False
    given = given.lower()
    for float_format in (_plain_float, _python_float):
        try:
            text = (string_to_sign(params, float_format) + private_key).encode("utf-8")
        except (ValueError, RecursionError):  # not signable (see the module doc), so not signed
            return False
        if hmac.compare_digest(hashlib.sha1(text).hexdigest(), given):
            return True
    return False

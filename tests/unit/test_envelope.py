import json

import pytest

from picserve import errors
from picserve.protocol import envelope, signature
from picserve.protocol.envelope import Envelope, error_reply, ok_reply


def test_envelope_parsing():
    env = Envelope.parse({"Action": "ListModels", "PublicKey": "p", "Signature": "s", "request_uuid": "u", "X": 1})
    assert env.params == {"X": 1}
    with pytest.raises(errors.ParamError, match="body must be a JSON object"):
        Envelope.parse([1])
    with pytest.raises(errors.ParamError, match="Action: missing"):
        Envelope.parse({"PublicKey": "p", "Signature": "s"})
    with pytest.raises(errors.AuthError, match="Signature: missing"):
        Envelope.parse({"Action": "A", "PublicKey": "p"})
    assert ok_reply("A", "u", {"X": 1}) == {"Action": "A", "RetCode": 0, "Message": "", "request_uuid": "u", "X": 1}
    assert error_reply("A", None, errors.TaskNotFound())["RetCode"] == 230


# --- Envelope: the common fields are strings --------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (
            {"Action": 5, "PublicKey": "p", "Signature": "s"},
            errors.ParamError,
            "Action: must be a JSON string, got the number 5",
        ),
        ({"Action": "", "PublicKey": "p", "Signature": "s"}, errors.ParamError, "Action: missing"),
        (
            {"Action": "A", "PublicKey": ["p"], "Signature": "s"},
            errors.ParamError,
            "PublicKey: must be a JSON string, got an array of 1 item",
        ),
        (
            {"Action": "A", "PublicKey": "p", "Signature": True},
            errors.ParamError,
            "Signature: must be a JSON string, got the bool true",
        ),
        (
            {"Action": "A", "PublicKey": "p", "Signature": "s", "request_uuid": 7},
            errors.ParamError,
            "request_uuid: must be a JSON string, got the number 7",
        ),
        (
            {"Action": "A" * 129, "PublicKey": "p", "Signature": "s"},
            errors.ParamError,
            "Action: must be at most 128 characters (got 129)",
        ),
        (
            {"Action": "A", "PublicKey": "p", "Signature": "s", "request_uuid": "u" * 129},
            errors.ParamError,
            "request_uuid: must be at most 128",
        ),
    ],
)
def test_common_fields_must_be_strings(body, error, message):
    with pytest.raises(error) as info:
        Envelope.parse(body)
    assert type(info.value) is error and info.value.message.startswith(message)


def test_a_null_request_uuid_is_no_request_uuid():
    assert (
        Envelope.parse({"Action": "A", "PublicKey": "p", "Signature": "s", "request_uuid": None}).request_uuid is None
    )


# --- decode: strict JSON, before the signature is checked -------------------------------------------------
def refused(raw: bytes) -> str:
    with pytest.raises(errors.ParamError) as info:
        envelope.decode(raw)
    return info.value.message


def test_decode_reads_json():
    assert envelope.decode(b'{"Width": 64.0, "P": ["a\\u00e9", "\xc3\xa9"], "N": null}') == {
        "Width": 64.0,
        "P": ["aé", "é"],
        "N": None,
    }
    assert envelope.decode(b'{"X": -1e308, "Y": 1e-400, "Z": ' + b"9" * 300 + b"}")["Y"] == 0.0  # in range


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"{", "the request body is not valid JSON: Expecting property name enclosed in double quotes"),
        (b'{"a": "\xff"}', "the request body is not valid UTF-8 (byte 0xff at offset 7)"),
        (b'{"a": "\xed\xa0\x80"}', "the request body is not valid UTF-8 (byte 0xed at offset 7)"),  # a raw surrogate
        ('{"a": 1}'.encode("utf-16"), "the request body is not valid UTF-8 (byte 0xff at offset 0)"),
        (b"\xef\xbb\xbf{}", "the request body is not valid JSON: Unexpected UTF-8 BOM"),
        (b'{"a": NaN}', "the request body holds NaN, which is not a JSON number"),
        (b'{"a": [-Infinity]}', "the request body holds -Infinity, which is not a JSON number"),
        (b'{"a": 1e400}', "the request body holds a number out of range, 1e400 (JSON numbers must fit a double)"),
        (b'{"a": -1E+400}', "the request body holds a number out of range, -1E+400"),
        (
            b'{"a": 1' + b"0" * 400 + b"}",
            f"the request body holds a number out of range, 1{'0' * 23}… (401 characters)",
        ),
        (
            b'{"a": ' + b"9" * 5000 + b"}",
            f"the request body holds a number out of range, {'9' * 24}… (5000 characters)",
        ),
        (b'{"a": 1, "b": {"c": 2, "c": 3}}', 'the request body has the key "c" twice in one object'),
        (b'{"a": "x\\u0000y"}', "a: the string holds a NUL character (\\u0000); every string must be valid Unicode"),
        (b'{"a": ["ok", "\\udc00"]}', "a[1]: the string holds a lone surrogate (\\udc00), not Unicode"),
        (b'{"a": {"b\\ud800": 1}}', 'a: the key "b\\ud800" holds a lone surrogate (\\ud800), not Unicode'),
        (b'{"\\u0000": 1}', 'the request body: the key "\\u0000" holds a NUL character'),
        (b"[" * 100_000 + b"]" * 100_000, "the request body is nested deeper than 32 levels"),
        (b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}", "a[0][0][0]"),
    ],
)
def test_decode_refuses_what_json_lets_through(raw, message):
    assert refused(raw).startswith(message)


def test_decode_allows_32_levels_and_escaped_text():
    nested = b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert envelope.decode(nested)["a"] == json.loads(b"[" * 31 + b"]" * 31)
    # escapes of real characters (an astral pair, a tab) are text like any other
    assert envelope.decode(b'{"a": "\\ud83d\\ude00\\t"}') == {"a": "😀\t"}


def test_describe_names_json_values_briefly():
    assert envelope.describe("true") == 'the string "true"'
    assert envelope.describe(True) == "the bool true"
    assert envelope.describe(64.5) == "the number 64.5"
    assert envelope.describe(None) == "null"
    assert envelope.describe({}) == "an object"
    assert envelope.describe([1, 2]) == "an array of 2 items"
    assert envelope.describe(10**100) == "the number 100000000000… (101 digits)"
    assert envelope.describe("x" * 1000) == f'the string "{"x" * 60}… (1000 characters)"'


# --- what cannot be signed is not signed (decode refuses it first; verify stays safe on its own) ----------
def test_verify_is_false_for_what_cannot_be_signed():
    body = {"Action": "ListModels", "PublicKey": "abcdefg"}
    good = signature.sign(body, "123456")
    assert signature.verify({**body, "Signature": good}, "123456")
    assert not signature.verify({**body, "Signature": "é" * 40}, "123456")  # compare_digest: ASCII only
    assert not signature.verify({**body, "X": "\ud800", "Signature": good}, "123456")  # no UTF-8 form
    assert not signature.verify({**body, "X": float("inf"), "Signature": good}, "123456")
    with pytest.raises(ValueError, match="cannot be signed"):
        signature.sign({**body, "X": float("nan")}, "123456")

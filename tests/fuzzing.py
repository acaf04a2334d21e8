"""Hostile PICPIK requests as hypothesis strategies: shared by tests/api/test_fuzz.py and bench/fuzz.py.

A case is the bytes of one POST plus its Content-Type. Most are *correctly signed* requests of one
action whose fields were mutated (wrong types, missing, out of range, huge, NaN/Infinity and numbers
beyond a double, NUL and lone surrogates, deep nesting, unknown fields, bad images, path-like
ModelCodes), so they get past the signature check and reach validation. The rest are raw bodies
(invalid UTF-8, 100k-deep nesting, duplicate keys, other content types, empty or truncated JSON).

It lives in tests/ rather than in the package: hypothesis is a test dependency, and the package
ships no test generators. The bench imports it with the repository root on sys.path.

Every reply must be HTTP 200 with a JSON object whose RetCode is an int other than 500 (`check_reply`).
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import itertools
import json
import struct
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from picserve.protocol.signature import sign
from tests.headers import SDXL_LORA, SDXL_MAIN, write_header

__all__ = [
    "MODEL",
    "TALLY",
    "Case",
    "cases",
    "check_reply",
    "has_fields",
    "hostile_images",
    "raw_cases",
    "signed_cases",
    "write_models",
]

#: the main model of the fuzz models folder (header-only files: all the API reads)
MODEL = "fuzz-xl"
LORA = "fuzz-lora"


@dataclass
class Tally:
    """Cases checked in this process: replies by RetCode and the seconds spent (the pytest summary prints it)."""

    codes: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(self.codes.items()))
        return f"fuzz: {self.cases} hostile requests in {self.seconds:.1f} s; replies by RetCode {{{codes}}}"


TALLY = Tally()


@dataclass(frozen=True)
class Case:
    #: "signed:<Action>" or "raw"
    kind: str
    body: bytes
    content_type: str | None
    #: what was done to the request, for a failure report
    note: str

    def __repr__(self) -> str:  # hypothesis prints falsifying examples: keep 10 MB bodies out of them
        return f"Case({self.kind}, {self.note}, {len(self.body)} bytes, {self.content_type!r})"


def check_reply(status: int, content: bytes) -> int:
    """The RetCode of a reply that is HTTP 200, a JSON object and no internal error; AssertionError otherwise."""
    assert status == 200, f"HTTP {status}: {content[:300]!r}"
    reply = json.loads(content)
    assert isinstance(reply, dict), reply
    code = reply.get("RetCode")
    assert isinstance(code, int) and not isinstance(code, bool), reply
    assert code != 500, reply
    assert isinstance(reply.get("Message"), str), reply
    return code


def write_models(root: Path) -> Path:
    """A models folder with one SDXL main model and one SDXL LoRA, as headers (no weights)."""
    write_header(root / "main" / f"{MODEL}.safetensors", SDXL_MAIN)
    write_header(root / "lora" / f"{LORA}.safetensors", SDXL_LORA)
    return root


# --- images ----------------------------------------------------------------------------------------------
def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int, rows: bytes = b"") -> bytes:
    """A PNG declaring width×height RGB whose pixel data is `rows` (a bomb's header, or an empty image)."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims width×height."""
    data = bytearray(_encoded(Image.new("RGB", (8, 8), "red"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@functools.cache
def hostile_images() -> tuple[tuple[str, str], ...]:
    """(name, ImageAndMaskList entry) pairs: a few good images and every kind of bad one. Built once."""
    rgb = Image.new("RGB", (8, 8), "red")
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    grey16 = Image.new("I;16", (8, 8))
    grey16.putpixel((0, 0), 40000)
    palette = Image.new("P", (8, 8))
    png = _encoded(rgb, "PNG")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    files = {
        "png": png,
        "jpeg": _encoded(rgb, "JPEG"),
        "webp": _encoded(rgb, "WEBP"),
        "mask": _encoded(Image.new("L", (8, 8), 255), "PNG"),
        "cmyk jpeg": _encoded(Image.new("CMYK", (8, 8)), "JPEG"),
        "16-bit png": _encoded(grey16, "PNG"),
        "palette png": _encoded(palette, "PNG", transparency=0),
        "1-bit png": _encoded(Image.new("1", (8, 8)), "PNG"),
        "la png": _encoded(Image.new("LA", (8, 8)), "PNG"),
        "gif": _encoded(rgb, "GIF"),
        "bmp": _encoded(rgb, "BMP"),
        "tiff": _encoded(rgb, "TIFF"),
        "animated png": _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "animated webp": _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "truncated png": png[: len(png) // 2],
        "png bad crc": bytes(bad_crc),
        "zero-size png": _png_header_only(0, 8),
        "bomb header 100000²": _png_header_only(100_000, 100_000),
        "bomb 6000² grey": _encoded(Image.new("L", (6000, 6000)), "PNG"),
        "jpeg claiming 60000²": _jpeg_claiming(60_000, 60_000),
        "text": b"hello, not an image",
        "empty": b"",
        "zeros": bytes(64),
    }
    entries = [(name, base64.b64encode(data).decode()) for name, data in files.items()]
    entries += [(f"{name} as data URI", f"data:image/png;base64,{text}") for name, text in entries[:12]]
    entries += [
        ("not base64", "@@not base64@@"),
        ("base64 without padding", base64.b64encode(png).decode().rstrip("=")[:-1]),
        ("base64 with newlines", base64.encodebytes(png).decode()),
        ("non-ASCII base64", "iVBORw0KGgo" + "é" * 8),
        ("empty data URI", "data:image/png;base64,"),
        ("data URI without base64", "data:text/plain,hello"),
        ("data URI without comma", "data:image/png;base64"),
        ("10 MB of base64 zeros", "A" * 10_000_000),
    ]
    return tuple(entries)


# --- values ----------------------------------------------------------------------------------------------
class Raw:
    """A number token written into the JSON text as it is (`1e400`, 400 digits): no Python float holds it."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __str__(self) -> str:  # what the signature encodes
        return self.token


_RAW_TOKENS = ("1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 309, "9" * 5000, "1E+2", "-0", "0.1e1", "1e-400")
_SPECIAL_STRINGS = (
    "",
    " ",
    "true",
    "false",
    "null",
    "64",
    "64.0",
    "-1",
    "NaN",
    "Infinity",
    "Euler",
    MODEL,
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\ufeff",
    "\u202e",
    "😀",
    "赛博朋克城市, masterpiece",
    "line\nbreak",
    "\\u0000",
    "%00",
)
#: what a client might try as a ModelCode to reach files outside the models folder
PATH_LIKE_CODES = (
    "../../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "/abs",
    "a/b",
    "C:\\x",
    "C:x",
    "\\\\server\\share",
    f"{MODEL}/../{MODEL}",
    f"../main/{MODEL}",
    f"./{MODEL}",
    f".{MODEL}",
    f"{MODEL}\x00.safetensors",
    f"{MODEL}.safetensors",
    "~",
    "%2e%2e%2f",
    "x" * 255,
    "x" * 256,
    "x" * 100_000,
)
_SPECIAL_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    6,
    63,
    64,
    2560,
    2561,
    2**31 - 1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**18,
    10**308,
    64.0,
    64.5,
    -0.0,
    0.5,
    1e308,
    5e-324,
    1e-7,
    float("nan"),
    float("inf"),
    float("-inf"),
)


@functools.cache
def _huge() -> tuple[Any, ...]:
    """Values far past any limit: built once, shared (never mutated)."""
    return ("h" * 10_000_000, ["x"] * 100_000, "h" * 100_000, [0] * 100_000)


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, each drawn in proportion to its weight (one_of draws its branches evenly)."""
    total = sum(weight for weight, _ in choices)

    def pick(n: int) -> st.SearchStrategy[Any]:
        for weight, strategy in choices:
            if n < weight:
                return strategy
            n -= weight
        raise AssertionError(n)

    return st.integers(0, total - 1).flatmap(pick)


_raw_tokens = st.sampled_from(_RAW_TOKENS).map(Raw)
_strings = st.one_of(
    st.sampled_from(_SPECIAL_STRINGS),
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Co"]), min_size=1, max_size=5),
)
#: one small JSON value of any type (no huge ones: these go inside containers)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_SPECIAL_NUMBERS),
    st.integers(),
    st.floats(),
    _strings,
    _raw_tokens,
)
_keys = st.one_of(
    st.sampled_from(["", "\x00", "\ud800", "k" * 1000, "Action", "Signature", "ModelCode", "Width", "__proto__"]),
    st.text(max_size=10),
)
#: request_uuids: a new one for each case (a request_uuid used again with other fields is refused, 162)
_request_numbers = itertools.count(uuid.uuid4().int >> 64 << 64)
_images = st.deferred(lambda: st.sampled_from(hostile_images()))
#: any hostile value: leaves, small containers, nesting up to past the limit, codes, images; huge ones rarely
#: (a 10 MB string costs tens of milliseconds a case, and a few of them make the point)
values = _weighted(
    (40, leaves),
    (10, st.lists(leaves, max_size=4)),
    (10, st.dictionaries(_keys, leaves, max_size=3)),
    (8, st.integers(1, 40).map(_nested)),
    (8, st.sampled_from(PATH_LIKE_CODES)),
    (8, _images.map(lambda named: named[1])),
    (1, st.integers(0, 3).map(lambda i: _huge()[i])),
)


# --- signed requests -------------------------------------------------------------------------------------
#: the request_uuid of every "reused uuid" case, whatever its action and fields
REUSED_UUID = str(uuid.UUID(int=2**64))


def has_fields(action: str) -> bool:
    """Whether `action`'s baseline request has fields of its own to mutate (else only the envelope and
    the body's root are: a few cases cover those)."""
    return bool(_baseline(action, "task", "none"))


def _baseline(action: str, task_uid: str, with_images: str) -> dict[str, Any]:
    """A valid request of `action` (its own fields; the envelope is added when signing)."""
    if action in ("ListTasksDetails", "CancelTask"):
        return {"TaskUIDList": [task_uid]}
    images = dict(hostile_images())
    if action == "RemoveContents":
        return {"RawImage": images["png"], "Mask": images["mask"], "MaskBlur": 4, "InvertMask": False}
    if action == "ModifyMaskedPixels":  # only-masked, with an outpainting margin
        return {
            "MainModel": {"ModelCode": MODEL, "InferenceParams": {"Steps": 6}},
            "PositivePrompts": ["a boat"],
            "TranslatePrompts": False,
            "Seed": 1,
            "ImageAndMaskList": [images["png"], images["mask"]],
            "Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 4, "InpaintArea": "OnlyMasked"},
            "Outpaint": {"Left": 8, "Top": 0, "Right": 0, "Bottom": 8},
        }
    if action != "GenerateImagesSDXL":
        return {}
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": MODEL, "InferenceParams": {"Steps": 6, "Sampler": "Euler", "CFGScale": 7.5}},
        "SubModelList": [{"ModelCode": LORA, "InferenceParams": {"LoraWeight": 0.5}}],
        "PositivePrompts": ["a photo of a cat"],
        "NegativePrompts": ["blurry"],
        "TranslatePrompts": False,
        "Seed": 1,
        "Width": 64,
        "Height": 64,
        "BatchSize": 1,
        "Tiling": False,
    }
    if with_images == "none":  # text to image: by hires fix (a 64² first pass)
        params.update(Width=128, Height=96, HiresFix={"Upscaler": "Latent", "Steps": 6, "DenoisingStrength": 0.5})
    if with_images == "img2img":
        params["ImageAndMaskList"] = [images["png"]]
        params["Image2Image"] = {"ImageIndex": 0, "ReferStrength": 0.5, "ResizeMode": "JustResize"}
    elif with_images == "inpaint":
        params["ImageAndMaskList"] = [images["png"], images["mask"]]
        params["Image2Image"] = {"ImageIndex": 0, "MaskIndex": 1}
    return params


def _positions(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into `value` (the root too): where a mutation may land."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _positions(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _positions(item, (*path, index))
    return found


def _mutate(params: dict[str, Any], path: tuple[Any, ...], operation: str, key: str, value: Any) -> str:
    """Apply one mutation in place at `path` (a position of the baseline); returns what was done.

    The caller never passes a path below one an earlier mutation replaced: that value may be a shared
    constant (`_huge`), which must stay as it is.
    """
    container: Any = params
    for part in path[:-1]:
        try:
            container = container[part]
        except (KeyError, IndexError, TypeError):
            return "skipped"
    if not path or operation == "add":
        target = container if not path else _get(container, path[-1])
        if isinstance(target, dict):
            target[key] = value
            return f"add {'/'.join(map(str, path))}/{key[:20]!r}"
        if isinstance(target, list):
            target.append(value)
            return f"append to {'/'.join(map(str, path))}"
        return "skipped"
    where = "/".join(map(str, path))
    try:
        if operation == "delete":
            del container[path[-1]]
            return f"delete {where}"
        container[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return "skipped"
    return f"set {where} = {_short(value)}"


def _get(container: Any, part: Any) -> Any:
    try:
        return container[part]
    except (KeyError, IndexError, TypeError):
        return None


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, Raw) else value.token
    return text if len(text) <= 40 else f"{text[:40]}…({len(text)})"


def _dumps(body: dict[str, Any], ascii_only: bool) -> bytes:
    """JSON text of `body` with Raw tokens in place, NaN/Infinity as literals; lone surrogates escaped
    (ascii_only) or written as raw, invalid UTF-8 bytes."""
    raws: list[str] = []

    def default(value: Any) -> Any:
        raws.append(value.token)
        return f"@@raw{len(raws) - 1}@@"

    text = json.dumps(body, ensure_ascii=ascii_only, allow_nan=True, default=default)
    for index, token in enumerate(raws):
        text = text.replace(f'"@@raw{index}@@"', token, 1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def signed_cases(draw: st.DrawFn, action: str, public_key: str, private_key: str, task_uid: str) -> Case:
    """A correctly signed request of `action` with one to three mutations (or a targeted one)."""
    with_images = draw(st.sampled_from(["none", "img2img", "inpaint"])) if action == "GenerateImagesSDXL" else ""
    params = copy.deepcopy(_baseline(action, task_uid, with_images))
    notes = []
    targeted = draw(st.sampled_from(["mutate", "mutate", "mutate", "image", "model", "none"]))
    if action == "GenerateImagesSDXL" and targeted == "image":
        name, entry = draw(_images)
        index = draw(st.integers(0, len(params.get("ImageAndMaskList", [])))) if with_images != "none" else 0
        images = params.setdefault("ImageAndMaskList", [])
        images[index : index + 1] = [entry]
        params.setdefault("Image2Image", {"ImageIndex": 0})
        notes.append(f"image {index} = {name}")
    elif action == "GenerateImagesSDXL" and targeted == "model":
        code = draw(st.one_of(st.sampled_from(PATH_LIKE_CODES), _strings))
        where = draw(st.sampled_from(["MainModel", "SubModelList"]))
        params[where] = {"ModelCode": code} if where == "MainModel" else [{"ModelCode": code}]
        notes.append(f"{where} ModelCode = {_short(code)}")
    elif targeted != "none" or action != "GenerateImagesSDXL":
        positions = _positions(params)
        replaced: list[tuple[Any, ...]] = []
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(positions))
            operation = draw(st.sampled_from(["set", "set", "delete", "add"]))
            key, value = draw(_keys), draw(values)
            if any(path[: len(done)] == done for done in replaced):
                continue  # below a value already replaced (see _mutate)
            notes.append(_mutate(params, path, operation, key, value))
            replaced.append(path)

    body: dict[str, Any] = {"Action": action, "PublicKey": public_key}
    envelope = draw(st.sampled_from(["uuid", "uuid", "uuid", "none", "hostile uuid", "hostile common", "reused uuid"]))
    if envelope == "uuid":
        body["request_uuid"] = str(uuid.UUID(int=next(_request_numbers)))
    elif envelope == "reused uuid":  # the same request_uuid with other fields: a resend or an idempotency conflict
        body["request_uuid"] = REUSED_UUID
        notes.append("request_uuid reused")
    elif envelope == "hostile uuid":
        body["request_uuid"] = draw(values)
        notes.append(f"request_uuid = {_short(body['request_uuid'])}")
    elif envelope == "hostile common":
        name = draw(st.sampled_from(["Action", "PublicKey", "Signature"]))
        body[name] = draw(values)
        notes.append(f"{name} = {_short(body[name])}")
    body.update(params)
    if "Signature" not in body:
        try:
            body["Signature"] = sign(body, private_key)
        except (ValueError, OverflowError):  # NaN, Infinity, a lone surrogate: not signable; refused unsigned
            body["Signature"] = "0" * 40
    ascii_only = draw(st.booleans())
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", None]))
    return Case(f"signed:{action}", _dumps(body, ascii_only), content_type, "; ".join(notes) or "valid")


# --- raw bodies ------------------------------------------------------------------------------------------
@st.composite
def raw_cases(draw: st.DrawFn, public_key: str, private_key: str) -> Case:
    """Bodies no JSON encoder writes: bytes, nesting, duplicate keys, other content types, truncation."""
    good = {"Action": "ListModels", "PublicKey": public_key}
    good["Signature"] = sign(good, private_key)
    good_text = json.dumps(good).encode()
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "invalid utf-8",
                "deep",
                "duplicate key",
                "content type",
                "empty",
                "truncated",
                "not an object",
                "bom",
                "utf-16",
                "number token",
            ]
        )
    )
    content_type: str | None = "application/json"
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "invalid utf-8":
        cut = draw(st.integers(0, len(good_text)))
        body = good_text[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xf8"]))
        body += good_text[cut:]
    elif kind == "deep":
        depth = draw(st.sampled_from([33, 300, 600, 999, 1000, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = opener * depth + b"1" + closer * depth
        body = good_text[:-1] + b', "Deep": ' + inner + b"}" if draw(st.booleans()) else inner
    elif kind == "duplicate key":
        key = draw(st.sampled_from(["Action", "PublicKey", "Signature", "X"]))
        body = good_text[:-1] + f', "{key}": "again"}}'.encode()
    elif kind == "content type":
        body = good_text
        content_type = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                    "application/xml",
                    "json",
                    "",
                    "application/json; charset=utf-16",
                ]
            )
        )
    elif kind == "empty":
        body = draw(st.sampled_from([b"", b" ", b"\n", b"\x00"]))
    elif kind == "truncated":
        body = good_text[: draw(st.integers(0, len(good_text) - 1))]
    elif kind == "not an object":
        body = draw(st.sampled_from([b"null", b"[]", b"1", b'"x"', b"true", b"[{}]", b"NaN", b"1e400"]))
    elif kind == "bom":
        body = b"\xef\xbb\xbf" + good_text
    elif kind == "utf-16":
        body = good_text.decode().encode("utf-16")
    else:
        token = draw(st.sampled_from((*_RAW_TOKENS, "NaN", "Infinity", "-Infinity")))
        body = good_text[:-1] + f', "X": {token}}}'.encode()
    return Case("raw", body, content_type, kind)


def cases(actions: list[str], public_key: str, private_key: str, task_uid: str) -> st.SearchStrategy[Case]:
    """Signed cases of every action in `actions` (GenerateImagesSDXL, the one with most fields, four times
    as often as each other one), and raw bodies as often as one action."""
    signed = [
        (4 if action == "GenerateImagesSDXL" else 1, signed_cases(action, public_key, private_key, task_uid))
        for action in actions
    ]
    return _weighted(*signed, (1, raw_cases(public_key, private_key)))

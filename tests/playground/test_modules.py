"""The playground's ES modules in Chromium, without a server: its own SHA-1 and the signature against
the spec's vectors and Python's hashlib, the prompt highlighter, the PNG text reader, and the lists it
keeps in step with the server. The files are served to the page by Playwright from the package."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
import random
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from picserve import domain
from picserve.playground import STATIC_DIR
from picserve.protocol import signature
from tests import needs
from tests.playground.conftest import INSECURE_HOST, BrowserErrors
from tests.unit.test_signature import PRIVATE, VECTORS

needs.need_module("playwright.sync_api", "Playwright for Python is not installed (it is in the test extra)")


def _serve_static(route: Any) -> None:
    """The package's static files at the origin's root; any other path: an empty page to import them from."""
    name = route.request.url.split("/", 3)[3].split("?")[0]
    path = STATIC_DIR / name
    if name and path.is_file():
        kind = "text/javascript" if name.endswith(".js") else mimetypes.guess_type(name)[0] or "text/plain"
        route.fulfill(status=200, body=path.read_bytes(), content_type=kind)
    else:
        route.fulfill(status=200, body="<!doctype html><title>modules</title>", content_type="text/html")


@pytest.fixture(scope="module")
def errors() -> BrowserErrors:
    return BrowserErrors()


@pytest.fixture(scope="module")
def page(browser, errors) -> Iterator[Any]:
    """A page on an insecure origin (no WebCrypto), as from a LAN address over plain HTTP."""
    context = browser.new_context()
    page = errors.watch(context.new_page())
    page.route(f"http://{INSECURE_HOST}/**", _serve_static)
    page.goto(f"http://{INSECURE_HOST}/")
    yield page
    context.close()
    assert errors.messages == []


def run(page: Any, module: str, body: str, arg: Any = None) -> Any:
    """`body` (an async function body) with `m` bound to the module and `arg` to the argument."""
    return page.evaluate(f"async (arg) => {{ const m = await import('/{module}'); {body} }}", arg)


def test_the_page_has_no_webcrypto(page):
    assert page.evaluate("[window.isSecureContext, typeof crypto.subtle]") == [False, "undefined"]
    assert run(page, "api.js", "return m.hasWebCrypto();") is False


@pytest.mark.parametrize(("params", "text", "expected"), VECTORS)
def test_spec_vectors_with_the_built_in_sha1(page, params, text, expected):
    got = run(
        page,
        "api.js",
        "const [p, key] = arg; const s = await m.sign(p, key); return [m.stringToSign(p), s.signature, s.signer];",
        [params, PRIVATE],
    )
    assert got == [text, expected, "built-in SHA-1"]


def test_sha1_matches_hashlib_on_boundaries_unicode_and_long_inputs(page):
    chance = random.Random(13)
    alphabet = "abcXYZ019 ,.:()[]<>\\\"'\n\té߀中文字🦊🎨\u0301\u200b"
    texts = ["", "a", "abc", "é", "🦊", "\x00\x01", "中" * 1000]
    # around the 64-byte block and the 56-byte length field, in UTF-8 bytes
    texts += ["x" * n for n in (55, 56, 57, 63, 64, 65, 119, 120, 128)]
    texts += ["".join(chance.choice(alphabet) for _ in range(chance.randrange(1, 300))) for _ in range(40)]
    texts.append("".join(chance.choice(alphabet) for _ in range(200_000)))  # ~400 kB of UTF-8
    texts.append("A" * 3_000_000)  # a large image's base64, signed in full
    got = run(page, "sha1.js", "return arg.map((t) => m.sha1Hex(t));", texts)
    assert got == [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]


def test_values_are_encoded_as_the_server_encodes_them(page):
    values: list[Any] = [
        0.35,
        7.0,
        7.5,
        1e-7,
        1.5e-7,
        123456789.125,
        1e21,
        -0.0,
        2**53 + 2,
        -1,
        0.1 + 0.2,
        2.5e-5,
        True,
        None,
    ]
    values += ["é 🦊", [1, "a", [False]], {"b": 1, "a": {"z": 0.5, "Z": None}, "request_uuid": "x", "Width": 64}]
    got = run(page, "api.js", "return arg.map((v) => m.encode(v));", json.loads(json.dumps(values)))
    assert got == [signature.encode(v) for v in values]


def test_a_request_with_an_image_is_signed_as_python_signs_it(page):
    image = "data:image/png;base64," + base64.b64encode(random.Random(5).randbytes(200_000)).decode()
    params = {
        "Action": "GenerateImagesSDXL",
        "PublicKey": "abcdefg",
        "request_uuid": "6c0b3c5e-1f5d-4c57-9a53-5d1c1fbb0f1e",
        "MainModel": {"ModelCode": "m", "InferenceParams": {"Steps": 6, "CFGScale": 7.5, "Sampler": "DPM++ 2M"}},
        "PositivePrompts": ["ein roter Fuchs im Schnee, (golden:1.2)"],
        "SubModelList": [{"ModelCode": "kohya-1", "InferenceParams": {"LoraWeight": 0.35}}],
        "ImageAndMaskList": [image, image],
        "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.75, "ResizeMode": "JustResize"},
        "Tiling": False,
    }
    got = run(page, "api.js", "return (await m.sign(arg, 'a private key ✓')).signature;", params)
    assert got == signature.sign(params, "a private key ✓")


def test_request_uuids_are_version_4(page):
    uuids = run(page, "api.js", "return Array.from({ length: 50 }, () => m.uuid4());")
    assert len(set(uuids)) == 50
    assert all(u[14] == "4" and u[19] in "89ab" and len(u) == 36 for u in uuids)


def test_api_errors_name_the_field_the_message_starts_with(page):
    messages = {
        "Width: must be between 64 and 2560 (got 63)": "Width",
        "MainModel.InferenceParams.Steps: must be between 6 and 100 (got 5)": "MainModel.InferenceParams.Steps",
        "MainModel.ModelCode 'x' is not on this server (available: a)": "MainModel.ModelCode",
        "SubModelList[1].ModelCode 'kohya-9' is not a LoRA, embedding or hypernetwork": "SubModelList[1].ModelCode",
        "ImageAndMaskList[1]: not an image": "ImageAndMaskList[1]",
        "Signature does not match: sign every field you send": "Signature",
        "the request body is not valid JSON": "",
        "internal server error": "",
    }
    got = run(page, "api.js", "return arg.map((t) => new m.ApiError(160, t, 'A').field);", list(messages))
    assert got == list(messages.values())


def test_the_sampler_list_is_the_servers():
    # options.js is read as text: the same list, in the same order, as picserve accepts
    text = (STATIC_DIR / "options.js").read_text()
    listed = json.loads(
        text[text.index("SAMPLERS = [") + len("SAMPLERS = ") : text.index("];") + 1].replace(",\n]", "]")
    )
    assert listed == list(domain.SAMPLER_NAMES)


def test_the_prompt_highlight(page):
    prompt = r"a (fox:1.3), [blurry] (hat) \(literal\) BREAK emb-a, inkstyle <lora:kohya-1:0.5> (open"
    pieces = run(
        page, "prompt.js", "return m.highlight(arg, { embeddings: ['emb-a'], triggers: ['InkStyle'] });", prompt
    )
    assert "".join(p["text"] for p in pieces) == prompt
    classes = {p["text"]: p["classes"] for p in pieces}
    assert classes["fox"] == ["up2"] and classes[":1.3"] == ["weight"]
    assert classes["blurry"] == ["down1"] and classes["hat"] == ["up1"]
    assert classes[r"\("] == ["esc"] and classes["BREAK"] == ["break"]
    assert classes["emb-a"] == ["emb"] and classes["inkstyle"] == ["trigger"]
    assert classes["<lora:kohya-1:0.5>"] == ["net"] and classes["("] == ["error"]  # the last one never closes


def test_network_tags_leave_the_prompt(page):
    got = run(page, "prompt.js", "return m.extractNetworks(arg);", "a fox, <lora:kohya-0:0.6>, snow <hypernet:hyper-a>")
    assert got == {
        "text": "a fox, snow",
        "networks": [
            {"kind": "lora", "code": "kohya-0", "weight": 0.6},
            {"kind": "hypernetwork", "code": "hyper-a", "weight": None},
        ],
    }


def test_png_text_chunks_are_read(page):
    info = PngImagePlugin.PngInfo()
    parameters = (
        "a fox, (snow:1.2)\nNegative prompt: blurry\nSteps: 6, Sampler: DPM++ 2M, CFG scale: 5, Seed: 42, "
        "Size: 64x48, Model: picserve-tiny, LoRA: kohya-1:0.8, kohya-0:0.6, Original prompt: 'ein Fuchs, Schnee', "
        "Version: picserve 0.1.0"
    )
    info.add_text("parameters", parameters)  # tEXt
    info.add_text("comment", "zipped " * 50, zip=True)  # zTXt
    info.add_text("title", "狐狸 🦊", zip=True)  # compressed iTXt (not Latin-1)
    info.add_itxt("plain", "é, 中", zip=False)
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(out, format="PNG", pnginfo=info)
    got = run(
        page,
        "png.js",
        "const bytes = Uint8Array.from(atob(arg), (c) => c.charCodeAt(0)); const png = await m.readPng(bytes);"
        "return [png, m.parseInfotext(png.text.parameters)];",
        base64.b64encode(out.getvalue()).decode(),
    )
    png, parsed = got
    assert (png["width"], png["height"]) == (64, 48)
    assert png["text"] == {"parameters": parameters, "comment": "zipped " * 50, "title": "狐狸 🦊", "plain": "é, 中"}
    assert parsed["prompt"] == "a fox, (snow:1.2)" and parsed["negativePrompt"] == "blurry"
    fields = parsed["fields"]
    assert fields["Seed"] == "42" and fields["Sampler"] == "DPM++ 2M" and fields["Size"] == "64x48"
    assert fields["LoRA"] == "kohya-1:0.8, kohya-0:0.6" and fields["Original prompt"] == "'ein Fuchs, Schnee'"
    assert fields["Version"] == "picserve 0.1.0"


def test_webcrypto_and_the_built_in_sha1_agree_where_both_exist(browser):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("http://localhost/**", _serve_static)  # localhost is a secure context
        page.goto("http://localhost/")
        got = run(
            page,
            "api.js",
            "const a = await m.sign(arg, 'k'); const b = await m.sign(arg, 'k', { useWebCrypto: false });"
            "return [m.hasWebCrypto(), a.signer, a.signature === b.signature, b.signer];",
            {"Action": "ListModels", "PublicKey": "é🦊", "X": [1.5, {"b": True}]},
        )
        assert got == [True, "WebCrypto", True, "built-in SHA-1"]
    finally:
        context.close()

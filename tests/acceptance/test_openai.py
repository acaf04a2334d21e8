"""The OpenAI-compatible endpoint as an OpenAI tool uses it: OpenAI's own Python client against a real
`picserve serve` (embedded PostgreSQL, one worker, the tiny SDXL on the CPU), one process for the module.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.processes import create_key, running, serve

ENV = {**os.environ, "PICSERVE_LOG_LEVEL": "warning", "PICSERVE_OPENAI_WAIT_TIMEOUT": "120"}
MODEL = "picserve-tiny"
#: the smallest request PICPIK's limits allow: 64×64, Steps 6 (an extension field here)
FAST = {"steps": 6}


@dataclass
class Server:
    base: str
    public_key: str
    private_key: str
    data_dir: Path

    def client(self, api_key: str | None = None) -> OpenAI:
        key = api_key if api_key is not None else f"{self.public_key}.{self.private_key}"
        return OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=150)


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("openai")
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    process = serve("--data-dir", data_dir, "--models-dir", models_dir, "--device", "cpu", log=log, env=ENV)
    with running(process):
        key = create_key(name="openai", data_dir=data_dir, env=ENV)
        yield Server(process.base, key["PublicKey"], key["PrivateKey"], data_dir)


def png(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    assert image.format == "PNG"
    return image


def png_bytes(image: Image.Image) -> bytes:
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_generate_returns_base64_pngs_and_urls_of_the_same_images(server):
    client = server.client()
    first = client.images.generate(
        model=MODEL, prompt="a red fox", n=2, size="64x64", response_format="b64_json", extra_body={**FAST, "seed": 7}
    )
    assert abs(first.created - time.time()) < 600
    assert [item.model_extra["seed"] for item in first.data] == [7, 8]  # a picserve extension
    images = [png(base64.b64decode(item.b64_json)) for item in first.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert "Seed: 7" in images[0].text["parameters"]

    again = client.images.generate(model=MODEL, prompt="a red fox", size="64x64", extra_body={**FAST, "seed": 7})
    (item,) = again.data
    assert item.url.startswith(f"{server.base}/results/") and item.b64_json is None
    fetched = png(httpx.get(item.url).content)
    # same seed, same image (up to the float rounding of a batch of 2 against a batch of 1 on the CPU)
    difference = np.abs(np.asarray(fetched, np.int16) - np.asarray(images[0], np.int16))
    assert difference.max() <= 4, difference.max()


def test_edit_with_a_mask_repaints_only_its_transparent_pixels(server):
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[16:48, 16:48] = 0  # OpenAI's convention: the fully transparent square is the area to edit
    mask = Image.fromarray(np.dstack([np.zeros((64, 64, 3), np.uint8), alpha]), "RGBA")

    result = server.client().images.edit(
        model=MODEL,
        image=("source.png", png_bytes(source), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
        prompt="a blue square",
        response_format="b64_json",
        extra_body=FAST,
    )
    (item,) = result.data
    edited = np.asarray(png(base64.b64decode(item.b64_json)).convert("RGB"))
    original = np.asarray(source)
    assert edited.shape == (64, 64, 3)  # size defaults to the image's own
    keep = alpha == 255
    assert np.array_equal(edited[keep], original[keep]), "a pixel outside the mask changed"
    assert not np.array_equal(edited[~keep], original[~keep]), "the masked square was not repainted"


def test_an_invalid_size_is_a_400_naming_the_field(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as out_of_range:
        client.images.generate(model=MODEL, prompt="x", size="5000x64", extra_body=FAST)
    assert out_of_range.value.status_code == 400
    assert out_of_range.value.param == "size"
    assert out_of_range.value.body["message"] == "size: Width must be between 64 and 2560 (got 5000)"

    with pytest.raises(openai.BadRequestError) as malformed:
        client.images.generate(model=MODEL, prompt="x", size="large")
    assert malformed.value.param == "size" and "WIDTHxHEIGHT" in malformed.value.message


def test_other_refusals_carry_openai_statuses(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dall-e-3", prompt="x", size="64x64")
    assert unknown.value.code == "model_not_found" and MODEL in unknown.value.message

    with pytest.raises(openai.BadRequestError) as several:  # the models folder holds two main models
        client.images.generate(prompt="x", size="64x64")
    assert several.value.param == "model" and MODEL in several.value.message

    with pytest.raises(openai.BadRequestError) as n:
        client.images.generate(model=MODEL, prompt="x", n=40, size="64x64")
    assert n.value.param == "n" and "BatchSize must be between 1 and 16 (got 40)" in n.value.message

    # a mask must say with its alpha channel where to edit
    opaque = png_bytes(Image.new("RGB", (64, 64)))
    with pytest.raises(openai.BadRequestError) as mask:
        client.images.edit(model=MODEL, image=("i.png", opaque, "image/png"), mask=("m.png", opaque), prompt="x")
    assert mask.value.param == "mask" and "alpha channel" in mask.value.message


def test_a_bad_key_is_a_401(server):
    for api_key in (f"{server.public_key}.wrong", f"nosuchkey.{server.private_key}", "no-dot-here"):
        with pytest.raises(openai.AuthenticationError) as refused:
            server.client(api_key).images.generate(model=MODEL, prompt="x", size="64x64")
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client(f"{server.public_key}.wrong").models.list()


def test_models_lists_the_main_models(server):
    listed = server.client().models.list()
    assert MODEL in {m.id for m in listed.data}
    assert all(m.object == "model" and m.owned_by == "picserve" for m in listed.data)
    assert server.client().models.retrieve(MODEL).id == MODEL

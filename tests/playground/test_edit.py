"""The playground's hires fix and eraser in Chromium against a real `picserve serve` (embedded PostgreSQL, one
worker, the tiny SDXL on the CPU): the Hires fix toggle sends GenerateImagesSDXL's HiresFix and the image
comes back at Width × Height; Erase sends RemoveContents with the painted mask (the models folder has a tiny
LaMa eraser) and an image of the input's size comes back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests import needs
from tests.playground.conftest import Server, served
from tests.playground.test_playground import decode_data_uri, open_playground, png_of, tiny_settings
from tests.playground.test_tools import result, sent

sync_api = needs.need_module("playwright.sync_api", "Playwright for Python is not installed (test extra)")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.models]


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir) -> Iterator[Server]:
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning"}
    with served(tmp_path_factory.mktemp("playground-edit"), models_dir, "playground-edit", env) as server:
        yield server


def generate(page: Any) -> tuple[dict[str, Any], str]:
    return sent(page, "GenerateImagesSDXL", lambda: page.get_by_role("button", name="Generate", exact=True).click())


def test_the_hires_toggle_generates_an_image_of_the_requested_size(page, server):
    open_playground(page, server)
    tiny_settings(page, "a lighthouse at dusk", seed=11)
    page.get_by_label("Width", exact=True).fill("128")
    page.get_by_label("Height", exact=True).fill("96")
    expect(page.locator("#hires-options")).to_be_hidden()
    page.get_by_label("Hires fix", exact=True).check()
    expect(page.locator("#hires-options")).to_be_visible()
    upscalers = page.locator("#hires-upscaler option").evaluate_all("options => options.map(o => o.value)")
    assert upscalers[:2] == ["Latent", "Lanczos"]
    page.get_by_label("Hires upscaler", exact=True).select_option("Lanczos")
    page.get_by_label("Hires steps", exact=True).fill("6")
    page.get_by_label("Denoising strength", exact=True).fill("0.5")
    body, uid = generate(page)
    assert (body["Width"], body["Height"]) == (128, 96)
    assert body["HiresFix"] == {"Upscaler": "Lanczos", "Steps": 6, "DenoisingStrength": 0.5}  # first pass: auto
    assert png_of(result(page, uid)).size == (128, 96)
    page.get_by_label("Hires fix", exact=True).uncheck()


def test_erase_on_a_drawn_mask_returns_an_image(page, server, tmp_path):
    pixels = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    source = tmp_path / "source.png"
    Image.fromarray(pixels).save(source)
    open_playground(page, server)
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Init image", exact=True).set_input_files(source)
    page.get_by_label("Paint a mask (inpainting)").check()
    canvas = page.locator("#mask-canvas")

    # nothing painted: the page says so by the canvas, and sends nothing
    page.get_by_role("button", name="Erase", exact=True).click()
    expect(page.locator("#mask-error")).to_contain_text("Paint over what to erase")

    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    body, uid = sent(page, "RemoveContents", lambda: page.get_by_role("button", name="Erase", exact=True).click())
    assert np.array_equal(np.asarray(decode_data_uri(body["RawImage"]).convert("RGB")), pixels)
    mask = np.asarray(decode_data_uri(body["Mask"]).convert("L"))
    assert mask.shape == (64, 64) and 0 < (mask == 255).mean() < 0.5
    # the models folder has an eraser (tests/conftest.py's tiny LaMa): the server's default one, no MainModel
    assert "MainModel" not in body and "EraseModel" not in body
    shot = result(page, uid)
    assert png_of(shot).size == (64, 64)
    expect(shot).to_contain_text("erased")

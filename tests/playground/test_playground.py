"""The playground as a user drives it: Chromium against a real `picserve serve` (embedded PostgreSQL,
one worker, the tiny SDXL on the CPU), one server and one browser for the module.

Each test finds its own task by the TaskUID the page got back, so they share one browser profile (and
so one gallery) as a user's day does, without depending on each other's order.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from picserve.protocol import signature
from tests import needs
from tests.playground.conftest import INSECURE_HOST, Server, served

sync_api = needs.need_module("playwright.sync_api", "Playwright for Python is not installed (test extra)")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.models]

MODEL = "picserve-tiny"
#: a whole generation on the tiny model takes seconds; the first also loads it
FINISH_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir) -> Iterator[Server]:
    # previews and progress often enough to be seen within a short task
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning", "PICSERVE_PREVIEW_INTERVAL": "0.05"}
    env["PICSERVE_PROGRESS_INTERVAL"] = "0.05"
    with served(tmp_path_factory.mktemp("playground"), models_dir, "playground", env) as server:
        yield server


def open_playground(page: Any, server: Server, host: str = "127.0.0.1") -> None:
    """The playground, connected with the server's key (typed in, not remembered)."""
    page.goto(f"http://{host}:{server.port}/")
    page.get_by_role("link", name="Playground").click()
    page.wait_for_url("**/playground/")
    page.get_by_label("Public key", exact=True).fill(server.public_key)
    page.get_by_label("Private key", exact=True).fill(server.private_key)
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("html")).to_have_attribute("data-connected", "true")
    expect(page.get_by_label("Model", exact=True)).to_have_value(MODEL)


def tiny_settings(page: Any, prompt: str, seed: int = -1) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Seed", exact=True).fill(str(seed))


def submit(page: Any, use_keyboard: bool = False) -> tuple[dict[str, Any], str]:
    """Generate; the request body the page sent and the TaskUID it got back."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and "GenerateImagesSDXL" in (r.request.post_data or "")
    ) as info:
        if use_keyboard:
            page.get_by_label("Prompt", exact=True).press("Control+Enter")
        else:
            page.get_by_role("button", name="Generate", exact=True).click()
    reply = info.value.json()
    assert reply["RetCode"] == 0, reply
    return json.loads(info.value.request.post_data), reply["TaskUID"]


def finished(page: Any, uid: str) -> Any:
    """The gallery item of the task's first image, once its PNG has been read."""
    shot = page.locator(f'#gallery .shot[data-uid="{uid}"][data-status="Finished"][data-width]').first
    shot.wait_for(timeout=FINISH_MS)
    return shot


def png_of(shot: Any) -> PngImagePlugin.PngImageFile:
    """The image the gallery item links (fetched here, from the same server the page used)."""
    url = shot.locator("a.thumb").get_attribute("href").replace(f"//{INSECURE_HOST}:", "//127.0.0.1:")
    image = Image.open(BytesIO(httpx.get(url, timeout=30).content))
    assert isinstance(image, PngImagePlugin.PngImageFile)
    image.load()
    return image


def decode_data_uri(uri: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(uri.split(",", 1)[1])))


#: the prompt the page opens with: real text, sent as it is
EXAMPLE_PROMPT = "a red fox sitting in fresh snow at golden hour, soft light, detailed fur, photograph"


def test_the_first_view_has_a_real_prompt_and_says_where_keys_come_from(page, server, screenshot):
    page.goto(f"http://127.0.0.1:{server.port}/playground/")
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_value(EXAMPLE_PROMPT)  # a value, not a placeholder that looks typed
    expect(page.locator("#key-source")).to_contain_text("picserve keys create --name me")
    expect(page.locator("#key-source")).to_be_visible()
    screenshot(page, "playground-first-view.png")

    open_playground(page, server)
    prompt.fill("   ")
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if "GenerateImagesSDXL" in (r.post_data or "") else None)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#prompt-error")).to_have_text("PositivePrompts: describe the image to make")
    assert sent == []  # never an empty prompt

    open_playground(page, server)  # a fresh load: the example again, generated as it is
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    body, uid = submit(page)
    assert body["PositivePrompts"] == [EXAMPLE_PROMPT]
    finished(page, uid)


def test_generate_a_64x64_image_end_to_end(page, server, screenshot):
    open_playground(page, server)
    # the model's defaults from ListModels (its sidecar: 6 steps, CFG 5), not the form's own
    expect(page.get_by_label("Steps", exact=True)).to_have_value("6")
    expect(page.get_by_label("CFG scale", exact=True)).to_have_value("5")
    expect(page.locator("#model-info")).to_contain_text("defaults: 6 steps, Euler, CFG 5")
    expect(page.locator("#credits")).to_have_text(re.compile(r"^[\d,]+ credits left of 1,000$"))
    credits = page.locator("#credits").get_attribute("data-left")
    assert server.private_key not in page.evaluate("JSON.stringify(localStorage)")  # "remember" is off

    tiny_settings(page, "a red fox in (fresh snow:1.2), [blurry]", seed=4242)
    expect(page.locator("#prompt-mirror .hl-weight")).to_have_text(":1.2")
    expect(page.locator("#prompt-mirror .hl-down1")).to_have_text("blurry")
    body, uid = submit(page, use_keyboard=True)  # Ctrl+Enter
    assert body["Width"] == 64 and body["Seed"] == 4242 and body["MainModel"]["InferenceParams"]["Steps"] == 6
    assert document_signer(page) == "webcrypto"  # 127.0.0.1 is a secure context

    shot = finished(page, uid)
    size = shot.locator("img").first.evaluate(
        "async (img) => { await img.decode(); return [img.naturalWidth, img.naturalHeight]; }"
    )
    assert size == [64, 64]
    expect(shot.locator(".parameters")).to_contain_text("Seed: 4242, Size: 64x64, Model: picserve-tiny")
    expect(shot.locator("figcaption")).to_contain_text("64×64 · seed 4242")
    assert png_of(shot).size == (64, 64)
    expect(page.locator("#credits")).not_to_have_attribute("data-left", credits or "")  # the task's cost is shown

    # "reuse these settings" puts back the prompt and this image's seed
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Seed", exact=True).fill("-1")
    shot.get_by_role("button", name="Reuse settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a red fox in (fresh snow:1.2), [blurry]")
    expect(page.get_by_label("Seed", exact=True)).to_have_value("4242")
    shot.locator("details.params summary").click()
    page.emulate_media(color_scheme="dark")
    screenshot(page, "playground-dark.png")
    page.emulate_media(color_scheme="light")

    # the gallery is this browser's: it is there after a reload (the key has to be entered again)
    page.reload()
    page.get_by_label("Public key", exact=True).fill(server.public_key)
    page.get_by_label("Private key", exact=True).fill(server.private_key)
    page.get_by_role("button", name="Connect").click()
    finished(page, uid)
    # "remember" keeps the key in this browser, and connects with it on the next visit; unticked, it is gone
    page.get_by_label("Remember keys on this device").check()
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-connected", "true")
    expect(page.get_by_label("Private key", exact=True)).to_have_value(server.private_key)
    page.get_by_label("Remember keys on this device").uncheck()
    assert server.private_key not in page.evaluate("JSON.stringify(localStorage)")


def document_signer(page: Any) -> str:
    return page.evaluate("document.documentElement.dataset.signer")


def test_a_lora_with_its_weight_and_trigger_word(page, server, screenshot):
    open_playground(page, server)
    page.get_by_label("LoRA", exact=True).select_option("kohya-1")
    page.get_by_role("button", name="Add LoRA").click()
    weight = page.get_by_label("Weight of kohya-1", exact=True)
    expect(weight).to_have_value("0.5")  # the LoRA's own default (its sidecar), from ListModels
    # every control of the page has a name (a label, aria-label or its text), the LoRA's row included
    unnamed = page.evaluate(
        "() => [...document.querySelectorAll('input, select, textarea, button, canvas')]"
        ".filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')"
        " || (e.tagName === 'BUTTON' && e.textContent.trim()))).map((e) => e.outerHTML.slice(0, 80))"
    )
    assert unnamed == []
    weight.fill("0.8")
    tiny_settings(page, "a fox <lora:kohya-0:0.6>", seed=7)
    page.get_by_role("button", name="sidecarword").click()  # the LoRA's trigger word, into the prompt
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a fox <lora:kohya-0:0.6>, sidecarword")
    expect(page.locator("#prompt-mirror .hl-trigger")).to_have_text("sidecarword")
    expect(page.locator("#prompt-mirror .hl-net")).to_have_text("<lora:kohya-0:0.6>")

    body, uid = submit(page)
    assert body["SubModelList"] == [
        {"ModelCode": "kohya-1", "InferenceParams": {"LoraWeight": 0.8}},
        {"ModelCode": "kohya-0", "InferenceParams": {"LoraWeight": 0.6}},  # the prompt's tag, taken out of it
    ]
    assert body["PositivePrompts"] == ["a fox, sidecarword"]
    shot = finished(page, uid)
    expect(shot.locator(".parameters")).to_contain_text("LoRA: kohya-1:0.8, kohya-0:0.6")
    assert "LoRA: kohya-1:0.8, kohya-0:0.6" in png_of(shot).text["parameters"]
    page.get_by_label("Prompt", exact=True).fill(
        "a red fox in (fresh snow:1.2), [blurry], sidecarword <lora:kohya-0:0.6>"
    )
    page.get_by_label("Negative prompt", exact=True).fill("lowres, watermark, emb-b")
    shot.locator("details.params summary").click()
    page.locator("#prompt-title").evaluate("(title) => title.scrollIntoView({ block: 'start' })")
    screenshot(page, "playground.png")


def test_paint_a_mask_and_inpaint(page, server, tmp_path, screenshot):
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    source = tmp_path / "source.png"
    Image.fromarray(pixels).save(source)
    open_playground(page, server)
    page.get_by_label("Width", exact=True).fill("512")
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Init image", exact=True).set_input_files(source)
    expect(page.get_by_label("Width", exact=True)).to_have_value("64")  # the output takes the image's size
    page.get_by_label("Prompt", exact=True).fill("a patch of moss")
    page.get_by_label("Refer strength", exact=True).fill("1")
    page.get_by_label("Paint a mask (inpainting)").check()

    canvas = page.locator("#mask-canvas")

    def at(x: float, y: float) -> tuple[float, float]:
        """A point of the canvas, by fractions of its size (read afresh: the column may have scrolled)."""
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        assert box is not None
        return box["x"] + box["width"] * x, box["y"] + box["height"] * y

    def stroke(y: float) -> None:
        page.mouse.move(*at(0.25, y))
        page.mouse.down()
        page.mouse.move(*at(0.75, y), steps=8)
        page.mouse.up()

    # a cleared mask is refused by the page itself, next to the canvas
    stroke(0.5)
    page.get_by_role("button", name="Clear", exact=True).click()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#mask-error")).to_contain_text("Paint the part of the image to repaint")
    stroke(0.45)
    stroke(0.55)
    page.get_by_label("Eraser").check()
    page.mouse.click(*at(0.5, 0.5))  # a hole in the middle
    page.get_by_label("Brush", exact=True).check()
    painted = "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; "
    painted += "for (let i = 3; i < d.length; i += 4) n += d[i] >= 128; return n; }"
    count = canvas.evaluate(painted)
    page.get_by_role("button", name="Invert", exact=True).click()
    assert canvas.evaluate(painted) == 64 * 64 - count
    page.get_by_role("button", name="Invert", exact=True).click()
    assert canvas.evaluate(painted) == count

    body, uid = submit(page)
    image_uri, mask_uri = body["ImageAndMaskList"]
    assert body["Image2Image"] == {"ImageIndex": 0, "ReferStrength": 1, "ResizeMode": "ResizeAndFill"}
    assert np.array_equal(np.asarray(decode_data_uri(image_uri).convert("RGB")), pixels)  # the file as chosen
    mask = np.asarray(decode_data_uri(mask_uri).convert("L"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert 0.05 < (mask == 255).mean() < 0.5 and mask[32, 32] == 0  # two strokes, the erased hole kept
    shot = finished(page, uid)
    result = np.asarray(png_of(shot).convert("RGB"))
    keep = mask == 0
    assert np.array_equal(result[keep], pixels[keep])  # every pixel outside the mask is the source's
    assert (result[~keep] != pixels[~keep]).any()
    expect(shot.locator(".parameters")).to_contain_text("Mask: True")
    page.locator("#i2i").scroll_into_view_if_needed()
    screenshot(page, "playground-inpaint.png")


def test_several_tasks_in_flight_with_queue_preview_and_cancel(page, server, screenshot):
    open_playground(page, server)
    page.get_by_label("Prompt", exact=True).fill("a long task")
    page.get_by_label("Width", exact=True).fill("256")
    page.get_by_label("Height", exact=True).fill("256")
    page.get_by_label("Steps", exact=True).fill("100")
    _, first = submit(page)
    page.get_by_label("Prompt", exact=True).fill("a task behind it")
    _, second = submit(page)
    runs = page.locator("#runs .run")
    expect(runs).to_have_count(2)
    running = page.locator(f'#runs .run[data-uid="{first}"]')
    queued = page.locator(f'#runs .run[data-uid="{second}"]')
    expect(queued.locator(".run-status")).to_have_text(re.compile(r"^Queued · position \d+$"))
    expect(running.locator(".run-status")).to_have_text(re.compile(r"^Running · \d+%$"), timeout=FINISH_MS)
    preview = running.locator("img.run-preview")
    expect(preview).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"), timeout=FINISH_MS)
    screenshot(page, "playground-runs.png")

    queued.get_by_role("button", name="Cancel").click()
    running.get_by_role("button", name="Cancel").click()
    for uid in (first, second):
        page.locator(f'#gallery .shot[data-uid="{uid}"][data-status="Canceled"]').wait_for(timeout=FINISH_MS)
    expect(runs).to_have_count(0)
    with server.client() as client:
        assert [d["Status"] for d in client.list_tasks_details([first, second])] == ["Canceled", "Canceled"]


def test_the_apis_refusals_are_shown_by_their_fields(page, server):
    open_playground(page, server)
    tiny_settings(page, "a fox")
    width = page.get_by_label("Width", exact=True)
    width.fill("63")
    page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator("#width-error")
    expect(error).to_have_text("Width: must be between 64 and 2560 (got 63)")  # the server's Message
    expect(width).to_have_attribute("aria-invalid", "true")
    expect(width).to_be_focused()
    assert "width-error" in (width.get_attribute("aria-describedby") or "").split()

    width.fill("64")
    expect(error).to_be_hidden()  # changing the field takes its error away
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("5")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#steps-error")).to_have_text(
        "MainModel.InferenceParams.Steps: must be between 6 and 100 (got 5)"
    )
    expect(steps).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#runs .run")).to_have_count(0)  # refused before anything was queued

    page.get_by_label("Private key", exact=True).fill("not-the-key")
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#private-key-error")).to_contain_text("Signature does not match")


def test_from_a_non_localhost_address_requests_are_signed_by_the_built_in_sha1(page, server):
    open_playground(page, server, host=INSECURE_HOST)
    assert page.evaluate("[window.isSecureContext, typeof crypto.subtle]") == [False, "undefined"]
    assert document_signer(page) == "js"
    expect(page.locator("#signer")).to_have_text(re.compile("built-in SHA-1.*not a secure context"))

    # an image-to-image request: the whole base64 image is signed in the page
    # an image dropped on the form becomes the init image
    blue = BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(blue, format="PNG")
    files = page.evaluate_handle(
        "(b64) => { const t = new DataTransfer(); const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));"
        " t.items.add(new File([bytes], 'blue.png', { type: 'image/png' })); return t; }",
        base64.b64encode(blue.getvalue()).decode(),
    )
    page.locator("#model").dispatch_event("dragover", {"dataTransfer": files})
    page.locator("#model").dispatch_event("drop", {"dataTransfer": files})
    expect(page.locator("#init-preview")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("a blue square")
    page.get_by_label("Tiling (seamless texture)").check()
    body, uid = submit(page)
    assert signature.sign(body, server.private_key) == body["Signature"]
    shot = finished(page, uid)
    assert png_of(shot).size == (64, 64)
    expect(shot.locator(".parameters")).to_contain_text("Denoising strength: 0.5")
    expect(shot.locator(".parameters")).to_contain_text("Tiling: True")
    # a tiling result is also shown repeated 2 × 2, to check its seams
    tiles = shot.get_by_role("img", name="The image repeated 2 × 2, to check its seams").locator("img")
    expect(tiles).to_have_count(4)
    sizes = tiles.evaluate_all(
        "async (all) => Promise.all(all.map(async (i) => { await i.decode(); return i.naturalWidth; }))"
    )
    assert sizes == [64, 64, 64, 64]

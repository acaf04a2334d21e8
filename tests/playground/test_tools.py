"""The playground's tools in Chromium against a real `picserve serve` (embedded PostgreSQL, one worker on
the CPU) whose models folder holds the tiny SDXL, a tiny Real-ESRGAN Compact 2× upscaler (spandrel) and a
tiny ONNX segmenter (rembg): a gallery image upscaled and cut out by its TaskUID, the tools panel
sending uploaded images, the buttons the server cannot serve left out, and the Generate bar that covers
no field at 1280×720.

Every task here runs to its end on the real engine; each test finds its own tasks by the TaskUIDs the
page got back, as tests/playground/test_playground.py does.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from picserve.protocol import signature
from tests import needs
from tests.playground.conftest import Server, served
from tests.playground.test_playground import (
    FINISH_MS,
    decode_data_uri,
    finished,
    open_playground,
    png_of,
    tiny_settings,
)

sync_api = needs.need_module("playwright.sync_api", "Playwright for Python is not installed (test extra)")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.models]

UPSCALER = "2x-compact"
SEGMENTER = "birefnet-tiny"


@pytest.fixture(scope="module")
def tool_models(tmp_path_factory) -> Path:
    """The tiny SDXL, a 2× upscaler of a real architecture and a segmenter rembg runs (random weights)."""
    from picserve.engine import tiny
    from tests.engine.onnx_files import write_tiny_segmenter
    from tests.engine.upscale_files import write_compact

    root = tmp_path_factory.mktemp("tool-models")
    tiny.write_model(root)
    write_compact(root / "upscale" / f"{UPSCALER}.pth", scale=2)
    write_tiny_segmenter(root / "background" / f"{SEGMENTER}.onnx")  # birefnet-*: the birefnet-general session
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, tool_models) -> Iterator[Server]:
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning", "U2NET_HOME": str(tmp_path_factory.mktemp("u2net"))}
    with served(tmp_path_factory.mktemp("playground-tools"), tool_models, "playground-tools", env) as server:
        yield server


def sent(page: Any, action: str, click: Any) -> tuple[dict[str, Any], str]:
    """`click()`, which makes the page send `action`: the request body and the TaskUID it got back."""
    marker = f'"Action":"{action}"'
    with page.expect_response(lambda r: r.request.method == "POST" and marker in (r.request.post_data or "")) as info:
        click()
    reply = info.value.json()
    assert reply["RetCode"] == 0, reply
    return json.loads(info.value.request.post_data), reply["TaskUID"]


def result(page: Any, uid: str) -> Any:
    """The gallery item of the task's first image once it is read, scrolled into view first (the gallery
    reads an image when it comes near the view, and the open tools panel pushes the gallery down)."""
    item = page.locator(f'#gallery .shot[data-uid="{uid}"]').first
    item.wait_for(state="attached", timeout=FINISH_MS)
    # the gallery is drawn again whenever a task ends: the item found may be replaced while it scrolls
    for attempt in range(20):
        try:
            item.scroll_into_view_if_needed(timeout=5_000)
            break
        except sync_api.Error:
            if attempt == 19:
                raise
            page.wait_for_timeout(100)
    return finished(page, uid)


def generated(page: Any, seed: int) -> tuple[str, Any]:
    """A 64×64 image made on the page: its TaskUID and its gallery item."""
    tiny_settings(page, "a fox on a plain background", seed=seed)
    _, uid = sent(page, "GenerateImagesSDXL", lambda: page.get_by_role("button", name="Generate", exact=True).click())
    return uid, result(page, uid)


def watch_runs(page: Any) -> None:
    """Record every run card the page adds (a tool's task on the tiny models may finish within one poll)."""
    page.evaluate(
        "() => { window.seenRuns = []; new MutationObserver((records) => { for (const r of records)"
        " for (const n of r.addedNodes) if (n.dataset?.uid) window.seenRuns.push([n.dataset.uid,"
        " n.dataset.tool, n.querySelector('.run-title').textContent]); })"
        ".observe(document.getElementById('runs'), { childList: true }); }"
    )


def run_card(page: Any, uid: str) -> list[str]:
    """The run card that was shown for `uid`: [uid, tool, title]."""
    handle = page.wait_for_function("(uid) => window.seenRuns.find((r) => r[0] === uid)", arg=uid)
    card: list[str] = handle.json_value()
    return card


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_gallery_image_is_upscaled_and_cut_out_by_its_taskuid(page, server, screenshot):
    open_playground(page, server)
    expect(page.get_by_label("Upscaler", exact=True)).to_have_value(UPSCALER)  # the only one: the default
    uid, shot = generated(page, seed=11)
    upscale = shot.get_by_role("button", name="Upscale", exact=True)
    expect(upscale).to_be_visible()
    expect(shot.get_by_role("button", name="Remove background", exact=True)).to_be_visible()
    watch_runs(page)

    body, upscaled = sent(page, "ResizeImage", upscale.click)
    assert body["Image"] == f"task:{uid}/0"  # chained: the server's own result, not its bytes again
    assert (body["Scale"], body["UpscaleModel"]) == (2, UPSCALER) and "Width" not in body
    assert signature.sign(body, server.private_key) == body["Signature"]
    assert run_card(page, upscaled) == [upscaled, "upscale", "Upscale 2×: a fox on a plain background"]
    with server.client() as client:
        [detail] = client.list_tasks_details([upscaled])
        assert detail["Action"] == "ResizeImage"
    big = result(page, upscaled)
    assert png_of(big).size == (128, 128)
    expect(big.locator("figcaption")).to_have_text(f"128×128 · upscaled 2× · {UPSCALER}")
    expect(big.get_by_role("button", name="Reuse settings")).to_have_count(0)  # nothing to reuse

    # the gallery's choices: 4× with Lanczos (no model)
    page.get_by_label("Upscale by", exact=True).select_option("4")
    page.get_by_label("Upscaler", exact=True).select_option("Lanczos")
    body, lanczos = sent(page, "ResizeImage", upscale.click)
    assert (body["Image"], body["Scale"], body["UpscaleModel"]) == (f"task:{uid}/0", 4, "Lanczos")
    assert png_of(result(page, lanczos)).size == (256, 256)

    # the upscaled image cut out in turn, by its own TaskUID; shown over a checkerboard
    body, cut = sent(page, "RemoveBackground", big.get_by_role("button", name="Remove background").click)
    assert body["RawImage"] == f"task:{upscaled}/0" and body["BackgroundModel"] == SEGMENTER
    assert signature.sign(body, server.private_key) == body["Signature"]
    assert run_card(page, cut)[1] == "cutout"
    cutout = result(page, cut)
    cut_png = png_of(cutout)
    assert cut_png.mode == "RGBA" and cut_png.size == (128, 128)
    expect(cutout).to_have_class(re.compile(r"\bcutout\b"))
    expect(cutout.locator("figcaption")).to_have_text(f"128×128 · background removed · {SEGMENTER}")
    background = cutout.locator("a.thumb").evaluate("(a) => getComputedStyle(a).backgroundImage")
    assert "conic-gradient" in background
    page.locator("#gallery-title").evaluate("(title) => title.scrollIntoView({ block: 'start' })")
    screenshot(page, "playground-tools.png")
    with server.client() as client:
        actions = [d["Action"] for d in client.list_tasks_details([uid, upscaled, lanczos, cut])]
        assert actions == ["GenerateImagesSDXL", "ResizeImage", "ResizeImage", "RemoveBackground"]

    # a refusal (here a factor past the API's 8, which the page's own choices never send) under the gallery
    page.locator("#quick-scale").evaluate("(s) => { s.append(new Option('16×', '16')); s.value = '16'; }")
    upscale.click()
    expect(page.locator("#gallery-error")).to_contain_text("Scale:")
    expect(upscale).to_be_enabled()


def test_without_a_background_model_remove_background_is_not_offered(page, server):
    def without_background_models(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        response = route.fetch()
        reply = response.json()
        if reply.get("Action") == "ListModels":
            reply["BackgroundModels"] = {}
        route.fulfill(response=response, body=json.dumps(reply))

    page.route(lambda url: url.rstrip("/").endswith(str(server.port)), without_background_models)
    open_playground(page, server)
    _, shot = generated(page, seed=13)
    expect(shot.get_by_role("button", name="Upscale", exact=True)).to_be_visible()  # Lanczos needs no model
    expect(page.get_by_role("button", name="Remove background")).to_have_count(0)
    page.get_by_text("Upscale or remove a background").click()
    expect(page.locator("#tools-no-background")).to_be_visible()
    expect(page.locator("#tools-cutout")).to_be_disabled()
    expect(page.locator("#tools-upscale")).to_be_enabled()


def test_the_tools_panel_sends_uploaded_images(page, server, tmp_path):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    first = tmp_path / "first.png"
    Image.fromarray(pixels).save(first)
    second = tmp_path / "second.jpg"
    square = Image.new("RGB", (80, 80), (8, 8, 8))
    square.paste((250, 250, 250), (20, 20, 60, 60))
    second.write_bytes(png_bytes(square, "JPEG"))

    open_playground(page, server)
    page.get_by_text("Upscale or remove a background").click()
    panel = page.locator("#tools")
    page.get_by_label("Images", exact=True).set_input_files(first)
    expect(page.locator("#tools-name")).to_have_text("first.png, 64 × 48.")
    expect(page.get_by_label("Output width", exact=True)).to_have_value("128")  # Scale 2, shown greyed
    expect(page.get_by_label("Output width", exact=True)).to_be_disabled()
    upscale = panel.get_by_role("button", name="Upscale", exact=True)

    body, by_scale = sent(page, "ResizeImage", upscale.click)
    assert body["Image"].startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(decode_data_uri(body["Image"]).convert("RGB")), pixels)  # the file as chosen
    assert (body["Scale"], body["UpscaleModel"]) == (2, UPSCALER) and "Width" not in body
    assert signature.sign(body, server.private_key) == body["Signature"]

    page.get_by_label("To a size").check()
    page.get_by_label("Output width", exact=True).fill("100")
    expect(page.get_by_label("Output height", exact=True)).to_have_value("75")  # the aspect ratio kept
    page.get_by_label("Upscaling model", exact=True).select_option("Lanczos")
    body, by_size = sent(page, "ResizeImage", upscale.click)
    assert (body["Width"], body["Height"], body["UpscaleModel"]) == (100, 75, "Lanczos") and "Scale" not in body

    page.get_by_label("Only the mask").check()
    page.get_by_label("Hair optimization", exact=True).select_option("off")
    page.get_by_label("Foreground threshold", exact=True).fill("200")
    page.get_by_label("Background threshold", exact=True).fill("30")
    page.get_by_label("Erode size", exact=True).fill("5")
    remove = panel.get_by_role("button", name="Remove background", exact=True)
    body, mask = sent(page, "RemoveBackground", remove.click)
    assert np.array_equal(np.asarray(decode_data_uri(body["RawImage"]).convert("RGB")), pixels)
    options = {k: body[k] for k in ("OnlyMask", "HairOptimization", "ForegroundThreshold", "BackgroundThreshold")}
    assert options == {
        "OnlyMask": True,
        "HairOptimization": "off",
        "ForegroundThreshold": 200,
        "BackgroundThreshold": 30,
    }
    assert (body["ErodeSize"], body["BackgroundModel"]) == (5, SEGMENTER)

    # two files: one batch, its results in the order chosen
    page.get_by_label("Only the mask").uncheck()
    page.get_by_label("Images", exact=True).set_input_files([first, second])
    expect(page.locator("#tools-previews img")).to_have_count(2)
    body, batch = sent(page, "RemoveBackgroundsInBatch", remove.click)
    assert [uri.split(",")[0] for uri in body["RawImages"]] == ["data:image/png;base64", "data:image/jpeg;base64"]

    assert png_of(result(page, by_scale)).size == (128, 96)
    assert png_of(result(page, by_size)).size == (100, 75)
    mask_png = png_of(result(page, mask))
    assert mask_png.mode == "L" and mask_png.size == (64, 48)  # the mask: one grey channel
    batch_items = page.locator(f'#gallery .shot[data-uid="{batch}"][data-width]')
    expect(batch_items).to_have_count(2, timeout=FINISH_MS)
    assert [png_of(batch_items.nth(i)).size for i in range(2)] == [(64, 48), (80, 80)]
    expect(batch_items.nth(1).locator("img").first).to_have_attribute("alt", "Cut-out: second.jpg")

    # a refusal is shown by its field in the panel
    page.get_by_label("Erode size", exact=True).fill("99")
    remove.click()
    error = page.locator("#tools-erode-error")
    expect(error).to_have_text("ErodeSize: must be between 0 and 40 (got 99)")
    expect(page.get_by_label("Erode size", exact=True)).to_have_attribute("aria-invalid", "true")


@pytest.mark.parametrize("viewport", [(1280, 720), (800, 700)], ids=["1280x720", "narrow"])
def test_the_generate_bar_covers_none_of_the_size_batch_and_seed_fields(browser, server, viewport):
    """At 1280×720 the sticky Generate bar hid the fields scrolled beneath it. Wherever the settings are
    scrolled to show a field, at the bottom of the view (as when scrolling down to it, or as focus and
    Playwright bring it into view), or scrolled to the end, the field is the element at its centre."""
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height}, reduced_motion="reduce")
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/playground/")
        expect(page.locator("html")).to_have_attribute("data-ready", "true")
        uncovered = """([id, how]) => {
            const input = document.getElementById(id);
            if (how === "end") input.scrollIntoView({ block: "end" });
            else if (how === "bottom") {
                for (const e of [document.scrollingElement, document.getElementById("settings")]) {
                    e.scrollTop = e.scrollHeight;
                }
            }
            const box = input.getBoundingClientRect();
            const bar = document.getElementById("actions").getBoundingClientRect();
            const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
            return { hit: hit === input, overlap: box.bottom > bar.top && box.top < bar.bottom };
        }"""
        for field in ("width", "height", "batch", "seed"):
            # narrow screens scroll the whole page, whose bottom is the gallery's: nothing to scroll to there
            for how in ("end", "bottom") if width > 900 else ("end",):
                assert page.evaluate(uncovered, [field, how]) == {"hit": True, "overlap": False}, (field, how)
        page.locator("#prompt").focus()
        for _ in range(40):  # tabbing through the settings: every focused field in view, uncovered
            page.keyboard.press("Tab")
            focused = page.evaluate("() => document.activeElement.id")
            if focused in ("width", "height", "batch", "seed"):
                assert page.evaluate(uncovered, [focused, "focused"]) == {"hit": True, "overlap": False}
    finally:
        context.close()

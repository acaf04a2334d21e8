"""The playground's Control section in Chromium against a real `picserve serve` whose models folder holds
the tiny SDXL with its tiny ControlNets (`tiny-canny`, `tiny-depth`, the Union `tiny-union`, the SD1
`sd15-canny` that does not fit it) and IP-Adapters (`tiny-ip-adapter`, `tiny-ip-adapter-plus`): the units
list what ListControlNets lists, a canny-guided generation runs to its end and shows its control map, a
reference image goes in as an IP-Adapter unit, and the ImageAndMaskList indexes follow the units.

Each test finds its own task by the TaskUID the page got back, as tests/playground/test_playground.py does.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from picserve.protocol import signature
from tests import needs
from tests.playground.conftest import Server, served
from tests.playground.test_playground import FINISH_MS, decode_data_uri, finished, open_playground, png_of, submit

sync_api = needs.need_module("playwright.sync_api", "Playwright for Python is not installed (test extra)")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.models]

#: ListControlNets' control models on the test models folder, as the picker labels them
LABELS = {
    "sd15-canny": "sd15-canny (SD1, does not fit this model)",
    "tiny-canny": "tiny-canny",
    "tiny-depth": "tiny-depth · Tiny depth",
    "tiny-union": "tiny-union (Union)",
    "tiny-ip-adapter": "tiny-ip-adapter (reference)",
    "tiny-ip-adapter-plus": "tiny-ip-adapter-plus (reference)",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir) -> Iterator[Server]:
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning"}
    with served(tmp_path_factory.mktemp("playground-control"), models_dir, "playground-control", env) as server:
        yield server


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    """A shape with hard edges (a canny map has something to find), a photo-like gradient, a mask."""
    root = tmp_path_factory.mktemp("control-pictures")
    shapes = Image.new("RGB", (64, 64), (250, 250, 250))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((12, 14, 40, 50), fill=(20, 20, 20))
    draw.ellipse((34, 6, 58, 30), fill=(200, 40, 40))
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    blue = Image.new("RGB", (64, 64), (40, 90, 160))
    files = {"shapes": shapes, "gradient": gradient, "mask": mask, "blue": blue}
    for name, image in files.items():
        image.save(root / f"{name}.png")
    return {name: root / f"{name}.png" for name in files}


def unit(page: Any, index: int) -> Any:
    return page.locator("#control-units > li.control-unit").nth(index)


def open_control(page: Any) -> None:
    if not page.locator("#control").evaluate("d => d.open"):
        page.locator("#control-title").click()


def options(select: Any) -> list[list[Any]]:
    """A select's options: [value, text, disabled]."""
    result: list[list[Any]] = select.evaluate("s => [...s.options].map((o) => [o.value, o.text, o.disabled])")
    return result


def tiny(page: Any, prompt: str, seed: int) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("6")
    page.get_by_label("Seed", exact=True).fill(str(seed))


def test_the_units_offer_what_list_controlnets_lists(page, server, pictures):
    open_playground(page, server)
    open_control(page)
    expect(page.locator("#control-reference-hint")).to_contain_text("tiny-ip-adapter, the default IP-Adapter")
    page.get_by_role("button", name="Add a ControlNet unit").click()
    first = unit(page, 0)
    expect(first.locator("legend")).to_have_text("Unit 1")
    model = first.get_by_label("Control model", exact=True)
    expect(model).to_have_value("tiny-canny")  # the first that fits
    listed = {value: (text, disabled) for value, text, disabled in options(model) if value}
    assert {code: listed.get(code) for code in LABELS} == {
        code: (text, code == "sd15-canny") for code, text in LABELS.items()
    }
    # the preprocessors: the model's own pairs first (its first chosen), then the others
    pre = first.get_by_label("Preprocessor", exact=True)
    expect(pre).to_have_value("canny")
    assert [o[0] for o in options(pre)][:3] == ["canny", "invert", "none"]
    assert {"scribble_xdog", "tile_resample"} <= {o[0] for o in options(pre)}
    expect(first.get_by_label("Canny low threshold", exact=True)).to_have_value("100")
    expect(first.get_by_label("Canny high threshold", exact=True)).to_have_value("200")
    expect(first.get_by_label("Resolution", exact=True)).to_have_value("512")
    expect(first.get_by_label("Control mode", exact=True)).to_have_value("Balanced")
    assert [o[1] for o in options(first.get_by_label("Control mode", exact=True))] == [
        "Balanced",
        "My prompt is more important",
        "ControlNet is more important",
    ]
    expect(first.get_by_label("Control type", exact=True)).to_be_hidden()  # not a Union

    model.select_option("tiny-depth")  # its sidecar's weight, its only pair: none (no parameters)
    expect(pre).to_have_value("none")
    expect(first.get_by_label("Control weight", exact=True)).to_have_value("0.8")
    expect(first.get_by_label("Resolution", exact=True)).to_be_hidden()
    model.select_option("tiny-union")
    control_type = first.get_by_label("Control type", exact=True)
    expect(control_type).to_be_visible()
    expect(pre).to_have_value("canny")
    assert [o[1] for o in options(control_type)][:2] == ["From the preprocessor (canny)", "openpose"]
    model.select_option("tiny-ip-adapter")  # a reference image: no preprocessor; a mask limits where it acts
    expect(first.locator(".badge")).to_have_text("Reference")
    expect(pre).to_be_hidden()
    expect(first.get_by_label("Mask (optional)", exact=True)).to_be_visible()
    expect(first.get_by_label("Control mode", exact=True)).to_be_hidden()
    expect(first.get_by_label("Reference image", exact=True)).to_be_visible()

    # an SD1 ControlNet cannot be chosen; forced in anyway, the page refuses it by the field, sending nothing
    with pytest.raises(sync_api.Error):
        model.select_option("sd15-canny", timeout=1_000)
    model.evaluate("s => { s.value = 'sd15-canny'; s.dispatchEvent(new Event('change', { bubbles: true })); }")
    expect(first.locator(".hint.warning")).to_contain_text("sd15-canny cannot be used with this main model")
    first.get_by_label("Control image", exact=True).set_input_files(pictures["blue"])
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if "GenerateImagesSDXL" in (r.post_data or "") else None)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(model).to_have_attribute("aria-invalid", "true")
    expect(page.locator(f"#{model.get_attribute('id')}-error")).to_contain_text("sd15-canny cannot be used")
    assert sent == []

    # the server's refusal of a unit's field is shown by that unit's field
    model.select_option("tiny-canny")
    weight = first.get_by_label("Control weight", exact=True)
    weight.fill("2.5")
    page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator(f"#{weight.get_attribute('id')}-error")
    expect(error).to_have_text(
        "ControlNetList[0].ControlModel.InferenceParams.ControlWeight: must be between 0 and 2 (got 2.5)"
    )
    expect(weight).to_have_attribute("aria-invalid", "true")
    assert len(sent) == 1
    first.get_by_role("button", name="Remove unit 1").click()
    expect(page.locator("#control-units > li")).to_have_count(0)


def test_a_canny_guided_generation_shows_its_control_map(page, server, pictures, screenshot):
    open_playground(page, server)
    tiny(page, "a red ball next to a black box", seed=21)
    open_control(page)
    page.get_by_role("button", name="Add a ControlNet unit").click()
    first = unit(page, 0)
    first.get_by_label("Control image", exact=True).set_input_files(pictures["shapes"])
    first.get_by_label("Canny low threshold", exact=True).fill("50")
    first.get_by_label("Canny high threshold", exact=True).fill("150")
    first.get_by_label("Resolution", exact=True).fill("64")
    first.get_by_label("Ending step", exact=True).fill("0.8")
    first.get_by_label("Control mode", exact=True).select_option("PromptMoreImportant")
    page.get_by_label("Show control maps").check()
    body, uid = submit(page)

    assert signature.sign(body, server.private_key) == body["Signature"]
    [image] = body["ImageAndMaskList"]
    assert np.array_equal(np.asarray(decode_data_uri(image).convert("RGB")), np.asarray(Image.open(pictures["shapes"])))
    assert body["ControlNetList"] == [
        {
            "ImageIndex": 0,
            "PreProcessor": {
                "ModelCode": "canny",
                "InferenceParams": {"CannyLowThreshold": 50, "CannyHighThreshold": 150, "Resolution": 64},
            },
            "ControlModel": {
                "ModelCode": "tiny-canny",
                "InferenceParams": {
                    "ControlWeight": 1,
                    "StartingStep": 0,
                    "EndingStep": 0.8,
                    "ControlMode": "PromptMoreImportant",
                    "ResizeMode": "ResizeAndFill",
                },
            },
        }
    ]
    assert body["ReturnControlMaps"] is True and "Image2Image" not in body

    shot = finished(page, uid)
    assert png_of(shot).size == (64, 64)
    expect(shot).not_to_have_attribute("data-map", "0")
    control_map = page.locator(f'#gallery .shot.control-map[data-uid="{uid}"][data-width]')
    control_map.wait_for(timeout=FINISH_MS)
    expect(page.locator(f'#gallery .shot[data-uid="{uid}"]')).to_have_count(2)  # the image, then its map
    expect(control_map).to_have_attribute("data-map", "0")
    expect(control_map.locator("figcaption")).to_have_text("64×64 · control map · unit 1 · canny → tiny-canny")
    expect(control_map.locator(".map-badge")).to_have_text("Control map")
    expect(control_map.get_by_role("button", name="Reuse settings")).to_have_count(0)
    edges = np.asarray(png_of(control_map).convert("L"))
    assert edges.shape == (64, 64) and 0.02 < (edges > 127).mean() < 0.4  # the shapes' outlines, on black
    first.evaluate("u => u.scrollIntoView({ block: 'start' })")  # the unit's image, model and preprocessor
    screenshot(page, "playground-controlnet.png")

    # the map again, ready-made, as a unit's image by its TaskUID (nothing uploaded); its unit's model again
    first.get_by_role("button", name="Remove unit 1").click()
    control_map.get_by_role("button", name="Use as control").click()
    again = unit(page, 0)
    expect(again.get_by_label("Control model", exact=True)).to_have_value("tiny-canny")
    expect(again.get_by_label("Preprocessor", exact=True)).to_have_value("none")
    page.get_by_label("Show control maps").uncheck()
    body, chained = submit(page)
    assert body["ImageAndMaskList"] == [f"task:{uid}/1"] and "ReturnControlMaps" not in body
    [sent_unit] = body["ControlNetList"]
    assert sent_unit["ImageIndex"] == 0 and "PreProcessor" not in sent_unit
    assert png_of(finished(page, chained)).size == (64, 64)

    # "Reuse settings" brings the units back (an uploaded image is not kept; a gallery image is)
    again.get_by_role("button", name="Remove unit 1").click()
    shot.get_by_role("button", name="Reuse settings").click()
    restored = unit(page, 0)
    expect(restored.get_by_label("Canny low threshold", exact=True)).to_have_value("50")
    expect(restored.get_by_label("Ending step", exact=True)).to_have_value("0.8")
    expect(restored).to_have_attribute("data-image", "false")
    expect(page.get_by_label("Show control maps")).to_be_checked()
    restored.get_by_role("button", name="Remove unit 1").click()


def test_a_reference_image_and_indexes_after_the_init_image_when_a_unit_is_removed(page, server, pictures):
    open_playground(page, server)
    page.get_by_label("Init image", exact=True).set_input_files(pictures["gradient"])
    tiny(page, "a calm lake", seed=5)
    open_control(page)
    page.get_by_label("Show control maps").check()
    page.get_by_role("button", name="Add a ControlNet unit").click()
    first = unit(page, 0)
    first.get_by_label("Control image", exact=True).set_input_files(pictures["shapes"])
    first.get_by_label("Mask (optional)", exact=True).set_input_files(pictures["mask"])
    first.get_by_label("Invert the mask").check()
    page.get_by_role("button", name="Add a ControlNet unit").click()
    second = unit(page, 1)
    second.get_by_label("Control model", exact=True).select_option("tiny-depth")
    # an image dropped on a unit is that unit's, not the init image (the form takes drops too)
    files = page.evaluate_handle(
        "(b64) => { const t = new DataTransfer(); const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));"
        " t.items.add(new File([bytes], 'blue.png', { type: 'image/png' })); return t; }",
        base64.b64encode(pictures["blue"].read_bytes()).decode(),
    )
    second.get_by_label("Control model", exact=True).dispatch_event("dragover", {"dataTransfer": files})
    second.get_by_label("Control model", exact=True).dispatch_event("drop", {"dataTransfer": files})
    expect(second.locator(".unit-file .status").first).to_have_text("blue.png, 64 × 64")
    expect(page.locator("#init-name")).to_contain_text("gradient.png")
    # the shortcut: one click, a unit with the default IP-Adapter, and the file chooser for its image
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Reference image…").click()
    chooser.value.set_files(pictures["blue"])
    third = unit(page, 2)
    expect(third.get_by_label("Control model", exact=True)).to_have_value("tiny-ip-adapter")
    expect(third).to_have_attribute("data-image", "true")
    expect(page.get_by_role("button", name="Add a ControlNet unit")).to_be_disabled()  # 3 units: the most
    expect(page.locator("#control-count")).to_have_text("3 units")

    # the second unit goes: the third becomes the second, and the indexes follow
    second.get_by_role("button", name="Remove unit 2").click()
    expect(page.locator("#control-units > li")).to_have_count(2)
    expect(unit(page, 1).locator("legend")).to_have_text("Unit 2")
    expect(unit(page, 1).get_by_role("button", name="Remove unit 2")).to_be_visible()
    body, uid = submit(page)
    init, shapes, mask, reference = body["ImageAndMaskList"]
    assert decode_data_uri(init).size == (64, 64) and decode_data_uri(mask).mode == "L"
    assert np.array_equal(
        np.asarray(decode_data_uri(shapes).convert("RGB")), np.asarray(Image.open(pictures["shapes"]))
    )
    assert body["Image2Image"]["ImageIndex"] == 0 and "MaskIndex" not in body["Image2Image"]
    canny, ip_adapter = body["ControlNetList"]
    assert (canny["ImageIndex"], canny["MaskIndex"], canny["InvertMask"]) == (1, 2, True)
    assert canny["ControlModel"]["ModelCode"] == "tiny-canny"
    assert ip_adapter == {
        "ImageIndex": 3,
        "ControlModel": {
            "ModelCode": "tiny-ip-adapter",
            "InferenceParams": {"ControlWeight": 1, "StartingStep": 0, "EndingStep": 1},
        },
    }
    assert decode_data_uri(reference).getpixel((5, 5)) == (40, 90, 160)
    shot = finished(page, uid)
    assert png_of(shot).size == (64, 64)
    # one map: the canny unit's (an IP-Adapter makes none)
    maps = page.locator(f'#gallery .shot.control-map[data-uid="{uid}"]')
    expect(maps).to_have_count(1)
    expect(maps.locator("figcaption")).to_contain_text("control map · unit 1 · canny → tiny-canny")
    with server.client() as client:
        [detail] = client.list_tasks_details([uid])
    assert len(detail["ImgList"]) == 2 and len(detail["SeedList"]) == 1

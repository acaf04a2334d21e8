"""The playground's faces, cut out by clicks, describe and new background in Chromium against a real
`picserve serve` (embedded PostgreSQL, one worker on the CPU) whose models folder holds the tiny SDXL and
tiny real models of the new kinds: a RestoreFormer face restorer and a YuNet-format detector
(tests/engine/face_files.py), a SAM folder (sam_files.py) and a WD-style tagger (caption_files.py).

What the page sends is checked on the request bodies it POSTs; the controls follow ListModels (a
listing without the new maps, as from an older server, hides them; several models show pickers). The
end-to-end tests run the tasks to their end on the real worker; where the worker does not run a kind
(no pipeline for it), they skip and say so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from picserve.protocol import signature
from tests import needs
from tests.playground.conftest import Server, served
from tests.playground.test_playground import FINISH_MS, decode_data_uri, open_playground, png_of, tiny_settings
from tests.playground.test_tools import result, sent

sync_api = needs.need_module("playwright.sync_api", "Playwright for Python is not installed (test extra)")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.models]

FACES = "restoreformer-tiny"
DETECTOR = "yunet-tiny"
SEGMENTER = "sam-tiny"
CAPTIONER = "wd-tiny"
#: the new maps of ListModels
NEW_MAPS = ("FaceModels", "FaceDetectModels", "SegmentModels", "CaptionModels")
#: what a task says when the worker has no pipeline for its kind (or its engine lacks the models' cache)
UNWIRED = re.compile(r"no pipeline runs task kind|this worker's engine (does no|does not)")


@pytest.fixture(scope="module")
def toolkit_models(tmp_path_factory) -> Path:
    """The tiny SDXL and one tiny model of each new kind (random weights, real formats)."""
    from picserve.engine import tiny
    from tests.engine.caption_files import write_tiny_tagger
    from tests.engine.face_files import write_tiny_restoreformer, write_tiny_yunet
    from tests.engine.sam_files import write_tiny_sam

    root = tmp_path_factory.mktemp("toolkit-models")
    tiny.write_model(root)
    write_tiny_restoreformer(root / "faces" / f"{FACES}.pth")
    write_tiny_yunet(root / "facedetect" / f"{DETECTOR}.onnx")
    write_tiny_sam(root / "segment" / SEGMENTER)
    write_tiny_tagger(root / "caption" / CAPTIONER)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, toolkit_models) -> Iterator[Server]:
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning"}
    with served(tmp_path_factory.mktemp("playground-toolkit"), toolkit_models, "playground-toolkit", env) as server:
        yield server


def listing(page: Any, server: Server, change: Callable[[dict[str, Any]], None]) -> None:
    """ListModels' replies to the page changed by `change` (the rest passes through)."""

    def route(handled: Any) -> None:
        if handled.request.method != "POST" or '"Action":"ListModels"' not in (handled.request.post_data or ""):
            handled.continue_()
            return
        response = handled.fetch()
        reply = response.json()
        change(reply)
        handled.fulfill(response=response, body=json.dumps(reply))

    page.route(lambda url: url.rstrip("/").endswith(str(server.port)), route)


def never_sent(page: Any, action: str) -> list[Any]:
    """The requests of `action` the page sends from now on (a list that stays empty when it sends none)."""
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if f'"Action":"{action}"' in (r.post_data or "") else None)
    return requests


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def pixels(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cut_out(width: int = 64, height: int = 64, box: tuple[int, int, int, int] = (20, 16, 44, 48)) -> Image.Image:
    """A foreground: a textured opaque rectangle on full transparency."""
    rgba = np.zeros((height, width, 4), np.uint8)
    x0, y0, x1, y1 = box
    rgba[y0:y1, x0:x1, :3] = pixels(x1 - x0, y1 - y0, seed=3)
    rgba[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def open_toolkit(page: Any) -> Any:
    page.get_by_text("Faces, cut out by clicks, describe, new background").click()
    return page.locator("#toolkit")


def click_pixel(page: Any, x: int, y: int, **options: Any) -> None:
    """Click the panel's image at the centre of its pixel (x, y): the displayed size scaled to the image's."""
    preview = page.locator("#toolkit-preview")
    box = preview.bounding_box()
    picker = page.locator("#toolkit-picker")
    width, height = int(picker.get_attribute("data-width")), int(picker.get_attribute("data-height"))
    preview.click(position={"x": (x + 0.5) * box["width"] / width, "y": (y + 0.5) * box["height"] / height}, **options)


def dots(page: Any) -> list[tuple[str, int, int]]:
    """The points drawn over the panel's image: (kind, x, y)."""
    got: list[tuple[str, int, int]] = page.locator("#toolkit-dots .point").evaluate_all(
        "(dots) => dots.map((d) => [d.classList.contains('include') ? 'include' : 'exclude',"
        " +d.dataset.x, +d.dataset.y])"
    )
    return [(kind, x, y) for kind, x, y in got]


def ended(page: Any, uid: str, action: str) -> Any:
    """The gallery item of the task once it ended; a skip where the worker does not run `action` yet."""
    item = page.locator(f'#gallery .shot[data-uid="{uid}"]').first
    item.wait_for(state="attached", timeout=FINISH_MS)
    if item.get_attribute("data-status") != "Finished":
        why = item.locator(".status-line").text_content() or ""
        if UNWIRED.search(why):
            pytest.skip(f"the worker does not run {action} yet ({why.strip()})")
        raise AssertionError(f"{action} task {uid}: {why}")
    return item


# --- what the page sends ---------------------------------------------------------------------------
def test_the_form_and_the_gallery_send_faces_points_and_descriptions(page, server):
    open_playground(page, server)
    # one model of each kind: no pickers, the requests name none (the server's default)
    expect(page.get_by_label("Restore faces", exact=True)).to_be_visible()
    expect(page.locator("#face-model-field")).to_be_hidden()
    page.get_by_label("Restore faces", exact=True).check()
    page.get_by_label("Face restore strength", exact=True).fill("0.7")
    tiny_settings(page, "a portrait on a plain background", seed=21)
    body, uid = sent(
        page, "GenerateImagesSDXL", lambda: page.get_by_role("button", name="Generate", exact=True).click()
    )
    assert body["FaceRestore"] == {"RestoreStrength": 0.7}
    assert signature.sign(body, server.private_key) == body["Signature"]
    page.get_by_label("Restore faces", exact=True).uncheck()
    shot = result(page, uid)
    shot.get_by_role("button", name="Reuse settings").click()  # the face settings come back with the rest
    expect(page.get_by_label("Restore faces", exact=True)).to_be_checked()
    expect(page.get_by_label("Face restore strength", exact=True)).to_have_value("0.7")
    page.get_by_label("Restore faces", exact=True).uncheck()

    # the gallery's one-click tools, by the image's TaskUID, with the panel's settings
    open_toolkit(page).get_by_label("Restore strength", exact=True).fill("0.25")
    body, restored = sent(page, "RestoreFaces", shot.get_by_role("button", name="Restore faces").click)
    assert {k: v for k, v in body.items() if k[0].isupper() and k not in ("Action", "PublicKey", "Signature")} == {
        "RawImage": f"task:{uid}/0",
        "RestoreStrength": 0.25,
    }
    body, _ = sent(page, "DescribeImages", shot.get_by_role("button", name="Describe").click)
    assert (body["ImageList"], body["TranslateDescription"]) == ([f"task:{uid}/0"], "en")
    assert "CaptionModel" not in body

    # cut out by clicks: the image into the panel; left click include, right click and Shift+click exclude
    shot.get_by_role("button", name="Cut out by clicks").click()
    expect(page.locator("#toolkit-name")).to_have_text(
        re.compile(r"^Gallery image: .*, 64 × 64 \(sent by its TaskUID\)\.$")
    )
    expect(page.locator("#toolkit-picker")).to_be_focused()
    click_pixel(page, 10, 50)
    click_pixel(page, 40, 8, button="right")
    click_pixel(page, 63, 0, modifiers=["Shift"])
    assert dots(page) == [("include", 10, 50), ("exclude", 40, 8), ("exclude", 63, 0)]
    expect(page.locator("#toolkit-points")).to_have_text("1 include point, 2 exclude points. Exclude point at 63, 0.")
    colours = page.locator("#toolkit-dots .point").evaluate_all(
        "(d) => d.map((e) => getComputedStyle(e).backgroundColor)"
    )
    assert colours == ["rgb(24, 165, 88)", "rgb(224, 52, 43)", "rgb(224, 52, 43)"]  # green, red
    body, cut = sent(page, "ExtractContents", page.get_by_role("button", name="Extract", exact=True).click)
    assert body["RawImage"] == f"task:{uid}/0"
    assert body["IncludePointList"] == [{"X": 10, "Y": 50}]
    assert body["ExcludePointList"] == [{"X": 40, "Y": 8}, {"X": 63, "Y": 0}]
    matting = {k: body[k] for k in ("ErodeSize", "ForegroundThreshold", "BackgroundThreshold", "HairOptimization")}
    assert matting == {
        "ErodeSize": 15,
        "ForegroundThreshold": 240,
        "BackgroundThreshold": 15,
        "HairOptimization": "auto",
    }
    assert body["OnlyMask"] is False and "SegmentModel" not in body
    assert signature.sign(body, server.private_key) == body["Signature"]

    # the tasks by TaskUID, to their end: the faces restored (the image has none: it comes back as it was),
    # the cut-out by clicks (RGBA, the image's size)
    ended(page, restored, "RestoreFaces")
    faces = result(page, restored)
    expect(faces.locator("figcaption")).to_have_text(f"64×64 · faces restored · {FACES}")
    assert np.array_equal(np.asarray(png_of(faces).convert("RGB")), np.asarray(png_of(shot).convert("RGB")))
    ended(page, cut, "ExtractContents")
    cutout = result(page, cut)
    expect(cutout.locator("figcaption")).to_have_text(f"64×64 · cut out by 1 + 2 points · {SEGMENTER}")
    assert png_of(cutout).mode == "RGBA"


def test_the_panel_sends_an_uploaded_image_by_clicks_and_keys(page, server, tmp_path):
    image = pixels(80, 60, seed=5)
    upload = save(Image.fromarray(image), tmp_path / "wide.png")
    open_playground(page, server)
    panel = open_toolkit(page)
    page.get_by_label("Image", exact=True).set_input_files(upload)
    expect(page.locator("#toolkit-name")).to_have_text("wide.png, 80 × 60.")
    expect(page.locator("#toolkit-preview")).to_have_attribute("alt", "wide.png, 80 × 60")

    # no point yet: refused on the page, nothing sent
    extracts = never_sent(page, "ExtractContents")
    panel.get_by_role("button", name="Extract", exact=True).click()
    expect(page.locator("#toolkit-picker-error")).to_contain_text("IncludePointList: click the object to cut out")
    assert extracts == []

    click_pixel(page, 20, 30)
    # the keyboard: the crosshair is at the last point (20, 30); an arrow moves it 2 px (80 / 50)
    picker = page.locator("#toolkit-picker")
    picker.focus()
    expect(page.locator("#toolkit-picker-error")).to_be_hidden()  # gone with the first point
    picker.press("ArrowRight")
    picker.press("Enter")
    picker.press("Shift+ArrowDown")  # five steps: 10 px
    picker.press("Shift+Enter")
    picker.press("ArrowUp")
    picker.press("Enter")
    picker.press("Backspace")  # that last one removed
    assert dots(page) == [("include", 20, 30), ("include", 22, 30), ("exclude", 22, 40)]
    page.get_by_label("Mask only", exact=True).check()
    panel.get_by_text("Matting (soft edges)").click()
    page.get_by_label("Hair optimization (soft edges)", exact=True).select_option("off")
    page.get_by_label("Erode size (0–40 px)", exact=True).fill("4")
    body, _ = sent(page, "ExtractContents", panel.get_by_role("button", name="Extract", exact=True).click)
    assert np.array_equal(np.asarray(decode_data_uri(body["RawImage"]).convert("RGB")), image)
    assert body["IncludePointList"] == [{"X": 20, "Y": 30}, {"X": 22, "Y": 30}]
    assert body["ExcludePointList"] == [{"X": 22, "Y": 40}]
    assert (body["OnlyMask"], body["HairOptimization"], body["ErodeSize"]) == (True, "off", 4)

    # a refusal by its field: this server translates into no other language than English
    page.get_by_label("Description language", exact=True).select_option("fr")
    panel.get_by_role("button", name="Describe", exact=True).click()
    expect(page.locator("#toolkit-language-error")).to_contain_text("TranslateDescription 'fr'")
    expect(page.get_by_label("Description language", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Description language", exact=True).select_option("en")
    body, _ = sent(page, "DescribeImages", panel.get_by_role("button", name="Describe", exact=True).click)
    assert len(body["ImageList"]) == 1 and body["ImageList"][0].startswith("data:image/png;base64,")
    assert body["TranslateDescription"] == "en"

    body, _ = sent(page, "RestoreFaces", panel.get_by_role("button", name="Restore faces", exact=True).click)
    assert body["RawImage"].startswith("data:image/png;base64,") and body["RestoreStrength"] == 0.5


def test_without_the_models_the_new_controls_are_hidden(page, server, tmp_path):
    def older_server(reply: dict[str, Any]) -> None:
        for name in NEW_MAPS:
            reply.pop(name, None)

    listing(page, server, older_server)
    open_playground(page, server)
    expect(page.locator("#face-restore-field")).to_be_hidden()
    panel = open_toolkit(page)
    for fieldset in ("faces", "points", "describe"):
        expect(page.locator(f"#toolkit-{fieldset}-set")).to_be_hidden()
    expect(panel.get_by_role("button", name="Generate background")).to_be_visible()  # a main model is all it needs
    page.get_by_label("Image", exact=True).set_input_files(save(Image.fromarray(pixels(32, 32, 1)), tmp_path / "a.png"))
    click_pixel(page, 5, 5)
    assert dots(page) == []  # no segmenter: a click is no point

    # a form whose "Restore faces" was ticked sends none when the server has no face models
    page.locator("#face-restore").evaluate("(box) => { box.checked = true; }")
    tiny_settings(page, "a fox on a plain background", seed=23)
    body, uid = sent(
        page, "GenerateImagesSDXL", lambda: page.get_by_role("button", name="Generate", exact=True).click()
    )
    assert "FaceRestore" not in body
    shot = result(page, uid)
    expect(shot.get_by_role("button", name="Upscale", exact=True)).to_be_visible()
    for name in ("Restore faces", "Cut out by clicks", "Describe", "New background"):
        expect(shot.get_by_role("button", name=name)).to_have_count(0)


def test_several_models_get_pickers_and_a_refusal_is_shown_by_its_picker(page, server, tmp_path):
    def second_models(reply: dict[str, Any]) -> None:
        reply["FaceModels"]["gfpgan-extra"] = {"ModelCode": "gfpgan-extra", "Name": "gfpgan-extra", "IsDefault": False}
        reply["CaptionModels"]["blip-extra"] = {"ModelCode": "blip-extra", "Name": "blip-extra", "IsDefault": False}

    listing(page, server, second_models)
    open_playground(page, server)
    page.get_by_label("Restore faces", exact=True).check()
    restorer = page.get_by_label("Face restorer", exact=True)
    expect(restorer).to_have_value(FACES)  # the server's default first
    expect(page.locator("#face-detect-model-field")).to_be_hidden()  # one detector: nothing to choose
    restorer.select_option("gfpgan-extra")
    tiny_settings(page, "a face", seed=2)
    generations = never_sent(page, "GenerateImagesSDXL")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#face-model-error")).to_contain_text(
        "FaceRestore.FaceModel 'gfpgan-extra' is not on this server"
    )
    expect(restorer).to_have_attribute("aria-invalid", "true")
    assert json.loads(generations[0].post_data)["FaceRestore"] == {"RestoreStrength": 0.5, "FaceModel": "gfpgan-extra"}

    # outpainting is ModifyMaskedPixels', which restores no faces: said on the page, nothing sent
    restorer.select_option(FACES)
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Init image", exact=True).set_input_files(
        save(Image.fromarray(pixels(64, 64, 6)), tmp_path / "i.png")
    )
    page.get_by_label("Left", exact=True).fill("64")
    edits = never_sent(page, "ModifyMaskedPixels")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#face-restore-error")).to_have_text(
        "Restore faces does not go with only masked or outpainting: untick it"
    )
    assert edits == [] and len(generations) == 1

    open_toolkit(page)
    expect(page.get_by_label("Captioner", exact=True)).to_have_value(CAPTIONER)
    expect(page.get_by_label("Restorer", exact=True)).to_have_value(FACES)


# --- to the end ------------------------------------------------------------------------------------
def test_a_new_background_for_an_uploaded_cut_out(page, server, tmp_path):
    foreground = cut_out()
    backdrop = Image.fromarray(pixels(96, 64, seed=9))
    open_playground(page, server)
    panel = open_toolkit(page)
    page.get_by_label("Image", exact=True).set_input_files(save(foreground, tmp_path / "subject.png"))
    panel.get_by_role("button", name="Generate background").click()
    expect(page.locator("#toolkit-bg-prompt-error")).to_have_text("PositivePrompts: describe the background to paint")

    page.get_by_label("Background prompt", exact=True).fill("a wooden kitchen table")
    page.get_by_label("Background image (optional)", exact=True).set_input_files(save(backdrop, tmp_path / "room.jpg"))
    expect(page.locator("#toolkit-bg-image-name")).to_have_text("room.jpg, 96 × 64.")
    page.get_by_label("Background refer strength", exact=True).fill("0.6")
    page.get_by_label("Deep fusion", exact=True).check()
    page.get_by_label("Seed", exact=True).fill("77")
    body, uid = sent(page, "GenerateBackgrounds", panel.get_by_role("button", name="Generate background").click)
    assert body["MainModel"]["ModelCode"] == "picserve-tiny" and body["MainModel"]["InferenceParams"]["Steps"] == 6
    assert (body["PositivePrompts"], body["Seed"], body["BatchSize"]) == (["a wooden kitchen table"], 77, 1)
    assert body["TransparentForeground"] == {"ImageIndex": 0} and "Width" not in body  # the foreground's size
    assert body["BackgroundImage2Image"] == {"ImageIndex": 1, "ReferStrength": 0.6, "DeepFusion": True}
    sent_foreground = decode_data_uri(body["ImageList"][0])
    assert sent_foreground.mode == "RGBA" and np.array_equal(np.asarray(sent_foreground), np.asarray(foreground))
    assert body["ImageList"][1].startswith("data:image/jpeg;base64,")
    assert signature.sign(body, server.private_key) == body["Signature"]

    shot = result(page, uid)
    made = png_of(shot)
    assert made.size == (64, 64)
    opaque = np.asarray(foreground)[..., 3] == 255
    assert np.array_equal(np.asarray(made.convert("RGB"))[opaque], np.asarray(foreground)[..., :3][opaque])
    expect(shot.locator("figcaption")).to_have_text("64×64 · new background · picserve-tiny")
    expect(shot.get_by_role("button", name="New background")).to_be_hidden()  # no transparency left

    # without a background image: the foreground's size, scaled
    page.get_by_role("button", name="Remove", exact=True).click()
    page.get_by_label("Foreground scale", exact=True).fill("1.5")
    body, _ = sent(page, "GenerateBackgrounds", panel.get_by_role("button", name="Generate background").click)
    assert body["TransparentForeground"] == {"ImageIndex": 0, "Scale": 1.5} and len(body["ImageList"]) == 1
    assert "BackgroundImage2Image" not in body


def test_a_cut_out_by_clicks_gets_a_new_background(page, server, tmp_path, screenshot):
    picture = Image.fromarray(pixels(80, 64, seed=11))
    open_playground(page, server)
    panel = open_toolkit(page)
    page.get_by_label("Image", exact=True).set_input_files(save(picture, tmp_path / "scene.png"))
    click_pixel(page, 40, 32)
    click_pixel(page, 2, 2, button="right")
    panel.scroll_into_view_if_needed()
    screenshot(page, "playground-toolkit.png")
    _, cut = sent(page, "ExtractContents", page.get_by_role("button", name="Extract", exact=True).click)
    item = ended(page, cut, "ExtractContents")
    shot = result(page, cut)
    made = png_of(shot)
    assert made.mode == "RGBA" and made.size == (80, 64)
    expect(item).to_have_class(re.compile(r"\bextract\b"))  # over a checkerboard
    expect(shot.locator("figcaption")).to_have_text(f"80×64 · cut out by 1 + 1 points · {SEGMENTER}")

    # the cut-out's own New background: into the panel, sent by its TaskUID
    shot.get_by_role("button", name="New background").click()
    expect(page.get_by_label("Background prompt", exact=True)).to_be_focused()
    page.get_by_label("Background prompt", exact=True).fill("a beach at noon")
    page.get_by_label("Seed", exact=True).fill("5")
    body, uid = sent(page, "GenerateBackgrounds", page.get_by_role("button", name="Generate background").click)
    assert body["ImageList"] == [f"task:{cut}/0"]
    new = png_of(result(page, uid))
    assert new.size == (80, 64)
    alpha = np.asarray(made)[..., 3] == 255
    assert np.array_equal(np.asarray(new.convert("RGB"))[alpha], np.asarray(made)[..., :3][alpha])


def test_describe_puts_the_text_in_the_prompt(page, server, tmp_path):
    open_playground(page, server)
    panel = open_toolkit(page)
    page.get_by_label("Image", exact=True).set_input_files(
        save(Image.fromarray(pixels(48, 48, seed=4)), tmp_path / "d.png")
    )
    page.get_by_label("Prompt", exact=True).fill("to be replaced")
    _, uid = sent(page, "DescribeImages", panel.get_by_role("button", name="Describe", exact=True).click)
    item = ended(page, uid, "DescribeImages")
    with server.client() as client:
        [detail] = client.list_tasks_details([uid])
    [text] = detail["TxtList"]
    assert text
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(text)
    expect(item.locator(".description")).to_have_text(text)
    expect(item.locator(".shot-title")).to_have_text("Describe: d.png")
    page.get_by_label("Prompt", exact=True).fill("something else")
    item.get_by_role("button", name="Use as prompt").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(text)
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()


def test_a_face_is_restored_in_an_uploaded_image(page, server, tmp_path):
    from tests.engine.test_faces import portrait  # its face: a magenta marker the tiny detector finds

    before = portrait()  # 256×224, the face's paste box (46, 14, 179, 147)
    open_playground(page, server)
    panel = open_toolkit(page)
    page.get_by_label("Image", exact=True).set_input_files(save(before, tmp_path / "portrait.png"))
    page.get_by_label("Restore strength", exact=True).fill("1")
    body, uid = sent(page, "RestoreFaces", panel.get_by_role("button", name="Restore faces").click)
    assert body["RestoreStrength"] == 1 and body["RawImage"].startswith("data:image/png;base64,")
    ended(page, uid, "RestoreFaces")
    after = png_of(result(page, uid))
    assert after.size == before.size
    was, now = np.asarray(before).astype(int), np.asarray(after.convert("RGB")).astype(int)
    keep = np.ones(was.shape[:2], bool)
    keep[14:147, 46:179] = False
    assert np.array_equal(was[keep], now[keep])  # nothing outside the face's box
    assert np.abs(was - now)[~keep].mean() > 5

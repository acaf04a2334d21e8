"""RestoreFaces, ExtractContents, DescribeImages and GenerateBackgrounds through the API: every refusal at
submit names its field; what is accepted is a task of its kind with every field of the request in its
spec; GenerateBackgrounds' canvas keeps the foreground's opaque pixels and marks the rest to paint.

The fast tier: in-memory repository and store, header-only model files (the runs, on tiny real models,
are tests/engine/test_faces.py, test_segment.py, test_describe.py and test_backgrounds.py).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from picserve import domain, domain_tools, errors, reference_images
from picserve.protocol import messages
from picserve.specs import backgrounds
from tests.api.conftest import MODEL, open_stack
from tests.api.conftest import request as generation
from tests.api.test_tools import image_b64, refused
from tests.headers import write_header

#: a header-only face restorer (a worker would load it with spandrel)
FACE_MODEL = {"encoder.conv_in.weight": (8, 3, 3, 3), "quantize.embedding.weight": (16, 4)}


def rgba_b64(width: int = 40, height: int = 30, box: tuple[int, int, int, int] = (10, 5, 30, 25)) -> str:
    """A red square on transparency: opaque inside `box`, with a soft (alpha 128) one-pixel edge around it."""
    alpha = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    alpha[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 128
    alpha[y0:y1, x0:x1] = 255
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = np.arange(width, dtype=np.uint8)[None, :]  # not flat, so a shifted paste would show
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def toolkit_settings(settings):
    root = settings.models_dir
    write_header(root / "faces" / "restoreformer-tiny.safetensors", FACE_MODEL)
    write_header(root / "faces" / "gfpgan-other.safetensors", FACE_MODEL)
    (root / "faces" / "restoreformer-tiny.json").write_text(
        json.dumps({"Default": True, "Architecture": "RestoreFormer"})
    )
    (root / "facedetect").mkdir()
    (root / "facedetect" / "yunet.onnx").write_bytes(b"\x08\x08\x12\x04test")
    for kind, code, config in (("segment", "sam-tiny", "sam"), ("caption", "blip-tiny", "blip")):
        (root / kind / code).mkdir(parents=True)
        (root / kind / code / "config.json").write_text(json.dumps({"model_type": config}))
    (root / "caption" / "wd-tagger").mkdir()
    (root / "caption" / "wd-tagger" / "model.onnx").write_bytes(b"\x08\x08\x12\x04test")
    (root / "caption" / "wd-tagger" / "selected_tags.csv").write_text("tag_id,name,category,count\n1,cat,0,9\n")
    (root / "caption" / "wd-tagger" / "config.json").write_text('{"architecture": "vit_base_patch16_224"}')  # timm's
    (root / "caption" / "blip-tiny.json").write_text(json.dumps({"Default": True}))
    (root / "segment" / "broken").mkdir()
    (root / "segment" / "broken" / "config.json").write_text("{}")
    return settings


@pytest.fixture
def toolkit(toolkit_settings):
    with open_stack(toolkit_settings) as opened:
        yield opened


def submitted(stack, action: str, **params: object) -> domain.TaskRecord:
    """The stored task of one accepted `action`."""
    client = stack.client()
    uid = client.call(action, **params)["TaskUID"]
    [task] = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)
    return task


# --- RestoreFaces ---------------------------------------------------------------------------------
def test_restore_faces_is_a_task_with_the_default_models_and_the_strength(toolkit):
    task = submitted(toolkit, "RestoreFaces", RawImage=image_b64(64, 48), RestoreStrength=0.8)
    spec = task.spec
    assert isinstance(spec, domain_tools.FaceRestoreSpec) and task.action == "RestoreFaces"
    assert (spec.width, spec.height, spec.strength) == (64, 48, 0.8)
    assert (spec.restorer_code, spec.detector_code) == ("restoreformer-tiny", "yunet")  # sidecar; the only one
    assert spec.image is None and spec.image_key is not None and task.cost == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"RestoreStrength": 1.5}, "RestoreStrength: must be between 0 and 1 (got 1.5)"),
        ({"RestoreStrength": True}, "RestoreStrength: must be a JSON number"),
        ({"FaceModel": "nope"}, "FaceModel 'nope' is not on this server (installed in models/faces: gfpgan-other,"),
        ({"FaceDetectModel": "nope"}, "FaceDetectModel 'nope' is not on this server (installed in models/facedetect"),
        ({"RawImage": "bm90IGFuIGltYWdl"}, "RawImage: not a readable PNG, JPEG or WebP image"),
    ],
)
def test_restore_faces_refusals_name_the_field(toolkit, params, message):
    assert message in refused(toolkit.client(), "RestoreFaces", **{"RawImage": image_b64(), **params}).message


def test_without_a_face_model_the_refusal_says_how_to_install_one(settings):
    with open_stack(settings) as stack:
        error = refused(stack.client(), "RestoreFaces", RawImage=image_b64())
    assert isinstance(error, errors.ModelNotFound)
    assert "FaceModel: none given, and this server has no default (installed in models/faces: none)" in error.message
    assert "install a face restorer" in error.message


def test_a_generation_takes_a_face_restoration_after_it(toolkit):
    body = generation(FaceRestore={"RestoreStrength": 0.6, "FaceModel": "gfpgan-other"})
    spec = submitted(toolkit, "GenerateImagesSDXL", **body).spec
    assert spec.face_fix == domain.FaceFix("gfpgan-other", "yunet", 0.6)
    assert submitted(toolkit, "GenerateImagesSDXL", **generation()).spec.face_fix is None
    error = refused(toolkit.client(), "GenerateImagesSDXL", **generation(FaceRestore={"FaceDetectModel": "x"}))
    assert "FaceRestore.FaceDetectModel 'x' is not on this server" in error.message


# --- ExtractContents ------------------------------------------------------------------------------
def test_extract_contents_keeps_the_points_and_the_matting_fields(toolkit):
    task = submitted(
        toolkit,
        "ExtractContents",
        RawImage=image_b64(40, 30),
        IncludePointList=[{"X": 20, "Y": 15}, {"X": 0, "Y": 0}],
        ExcludePointList=[{"X": 39, "Y": 29}],
        ErodeSize=3,
        HairOptimization="on",
        OnlyMask=True,
    )
    spec = task.spec
    assert isinstance(spec, domain_tools.ExtractSpec)
    assert spec.include == ((20, 15), (0, 0)) and spec.exclude == ((39, 29),)
    assert (spec.model_code, spec.erode_size, spec.hair, spec.only_mask) == ("sam-tiny", 3, "on", True)
    assert (spec.foreground_threshold, spec.background_threshold) == (240, 15)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"IncludePointList": []}, "IncludePointList: must hold 1 to 64 items (got 0)"),
        ({"IncludePointList": None}, "IncludePointList"),
        (
            {"IncludePointList": [{"X": 40, "Y": 0}]},
            "IncludePointList[0]: the point {X: 40, Y: 0} is outside the 40x30 image (0 <= X < 40, 0 <= Y < 30)",
        ),
        ({"ExcludePointList": [{"X": 1, "Y": -1}]}, "ExcludePointList[0]: the point {X: 1, Y: -1} is outside"),
        (
            {"ExcludePointList": [{"X": 5, "Y": 5}]},
            "ExcludePointList: the point {X: 5, Y: 5} is also in IncludePointList",
        ),
        ({"IncludePointList": [{"X": 1.5, "Y": 0}]}, "IncludePointList[0].X: must be a JSON integer"),
        ({"IncludePointList": [{"X": 1}]}, "IncludePointList[0].Y: missing required field"),
        ({"BackgroundThreshold": 240}, "BackgroundThreshold 240 must be below ForegroundThreshold 240"),
        ({"SegmentModel": "broken"}, "SegmentModel 'broken' cannot be used: broken/config.json names no model_type"),
        ({"BackgroundModel": "x"}, "BackgroundModel: unknown field"),
    ],
)
def test_extract_contents_refusals_name_the_field(toolkit, params, message):
    body = {"RawImage": image_b64(40, 30), "IncludePointList": [{"X": 5, "Y": 5}], **params}
    if body["IncludePointList"] is None:
        del body["IncludePointList"]
    assert message in refused(toolkit.client(), "ExtractContents", **body).message


# --- DescribeImages -------------------------------------------------------------------------------
def test_describe_images_is_one_task_for_the_list_in_order(toolkit):
    images = [image_b64(40, 30), image_b64(20, 10, "red")]
    task = submitted(toolkit, "DescribeImages", ImageList=images, CaptionModel="wd-tagger")
    spec = task.spec
    assert isinstance(spec, domain_tools.DescribeSpec) and task.action == "DescribeImages"
    assert spec.sizes == ((40, 30), (20, 10)) and spec.model_code == "wd-tagger" and spec.language == "en"
    assert task.cost == 2 and all(key for key in spec.images_keys)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ImageList": []}, "ImageList: must hold 1 to 16 items (got 0)"),
        ({"ImageList": ["x"] * 17}, "ImageList: must hold 1 to 16 items (got 17)"),
        ({"ImageList": [image_b64(), "bm90IGFuIGltYWdl"]}, "ImageList[1]: not a readable"),
        ({"TranslateDescription": "xx"}, "TranslateDescription: must be one of en, zh, ja, ko"),
        ({"TranslateDescription": "de"}, "TranslateDescription 'de': this server has no English→de translation model"),
        (
            {"CaptionModel": "nope"},
            "CaptionModel 'nope' is not on this server (installed in models/caption: blip-tiny,",
        ),
    ],
)
def test_describe_images_refusals_name_the_field(toolkit, params, message):
    body = {"ImageList": [image_b64()], **params}
    assert message in refused(toolkit.client(), "DescribeImages", **body).message


# --- GenerateBackgrounds --------------------------------------------------------------------------
def background_request(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "MainModel": {"ModelCode": MODEL},
        "PositivePrompts": ["a marble table in a sunny kitchen"],
        "Seed": 3,
        "TranslatePrompts": False,
        "ImageList": [rgba_b64(40, 30)],
        "TransparentForeground": {"ImageIndex": 0},
    }
    return {**body, **overrides}


def test_a_background_is_an_inpainting_of_everything_but_the_subject(toolkit):
    task = submitted(toolkit, "GenerateBackgrounds", **background_request(Width=80, Height=64))
    spec = task.spec
    assert isinstance(spec, domain.GenerationSpec) and task.action == "GenerateBackgrounds"
    assert (spec.width, spec.height, spec.mode, spec.strength, spec.mask_blur) == (80, 64, "inpaint", 1.0, 0)


def layout(**overrides: object) -> tuple[np.ndarray, np.ndarray, float]:
    request = messages.parse(messages.GenerateBackgrounds, background_request(**overrides))
    canvas, mask, strength = backgrounds.layout(request)
    return np.asarray(canvas), np.asarray(mask), strength


def test_the_canvas_holds_the_foreground_centred_and_the_mask_spares_its_opaque_pixels():
    canvas, mask, strength = layout(Width=80, Height=64)
    foreground = np.asarray(reference_images.decode(rgba_b64(40, 30), "f"))
    opaque = foreground[..., 3] == 255
    at_x, at_y = (80 - 40) // 2, (64 - 30) // 2
    placed = canvas[at_y : at_y + 30, at_x : at_x + 40]
    assert np.array_equal(placed[opaque], foreground[..., :3][opaque])  # the subject, exactly
    assert (mask[at_y : at_y + 30, at_x : at_x + 40][opaque] == 0).all()  # never painted
    soft = (foreground[..., 3] > 0) & ~opaque
    assert (mask[at_y : at_y + 30, at_x : at_x + 40][soft] == 127).all()  # the edge: blended by its alpha
    outside = np.ones(mask.shape, bool)
    outside[at_y : at_y + 30, at_x : at_x + 40] = foreground[..., 3] == 0
    assert (mask[outside] == 255).all() and strength == 1.0


def test_placement_scale_and_default_canvas():
    canvas, mask, _ = layout(TransparentForeground={"ImageIndex": 0, "Scale": 3, "X": 0, "Y": 0})
    assert canvas.shape[:2] == (90, 120)  # the canvas defaults to the scaled foreground
    canvas, mask, _ = layout(Width=100, Height=100, TransparentForeground={"ImageIndex": 0, "X": 60, "Y": 70})
    assert (mask[70 + 5 : 70 + 25, 60 + 10 : 60 + 30] == 0).all() and (mask[:70] == 255).all()
    big = layout(ImageList=[rgba_b64(200, 100, (20, 20, 180, 80))], Width=100, Height=100)
    assert big[0].shape[:2] == (100, 100) and (big[1] == 0).any()  # scaled down to fit by default


def test_a_background_image_is_kept_outside_the_band_unless_deep_fusion():
    backdrop = image_b64(160, 120, "navy")
    reference = {"ImageIndex": 1, "ReferStrength": 0.4}
    canvas, mask, strength = layout(
        ImageList=[rgba_b64(40, 30), backdrop], Width=160, Height=120, BackgroundImage2Image=reference
    )
    assert strength == 0.4 and tuple(canvas[0, 0]) == (0, 0, 128)  # the image, fitted
    band = backgrounds._band(160, 120)
    assert band == 16 and mask[0, 0] == 0 and mask[60, 69 - band] == 255 and mask[60, 69 - band - 1] == 0
    _, deep, _ = layout(
        ImageList=[rgba_b64(40, 30), backdrop],
        Width=160,
        Height=120,
        BackgroundImage2Image={**reference, "DeepFusion": True},
    )
    assert deep[0, 0] == 255


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ImageList": [image_b64(40, 30)]},
            "ImageList[0] (TransparentForeground): the foreground has no alpha channel",
        ),
        ({"ImageList": [image_b64(40, 30, mode="RGBA")]}, "the foreground is opaque everywhere"),
        ({"ImageList": [image_b64(40, 30, (0, 0, 0, 0), mode="RGBA")]}, "the foreground is transparent everywhere"),
        ({"TransparentForeground": {"ImageIndex": 1}}, "TransparentForeground.ImageIndex 1 is out of range: ImageList"),
        (
            {"TransparentForeground": {"ImageIndex": 0, "X": 50}, "Width": 64},
            "TransparentForeground.X 50: the 40 px foreground must lie on the 64 px canvas (X from 0 to 24)",
        ),
        (
            {"TransparentForeground": {"ImageIndex": 0, "Scale": 4}, "Width": 64, "Height": 64},
            "TransparentForeground.Scale: the foreground scaled by 4.0 is 160x120, larger than the 64x64 canvas",
        ),
        ({"ImageList": [rgba_b64(), image_b64()]}, "ImageList[1]: no index refers to this entry"),
        ({"BackgroundImage2Image": {"ImageIndex": 0}}, "BackgroundImage2Image.ImageIndex 0 is the foreground"),
        (
            {"BackgroundImage2Image": {"ImageIndex": 1, "DeepFusion": "yes"}, "ImageList": [rgba_b64(), image_b64()]},
            "BackgroundImage2Image.DeepFusion: must be a JSON bool",
        ),
        ({"TransparentForeground": None}, "TransparentForeground: missing required field"),
        ({"MainModel": {"ModelCode": "nope"}}, "nope"),
    ],
)
def test_background_refusals_name_the_field(toolkit, overrides, message):
    body = background_request(**overrides)
    if body["TransparentForeground"] is None:
        del body["TransparentForeground"]
    assert message in refused(toolkit.client(), "GenerateBackgrounds", **body).message


# --- ListModels -----------------------------------------------------------------------------------
def test_list_models_lists_the_toolkits_models(toolkit):
    reply = toolkit.client().call("ListModels")
    assert set(reply["FaceModels"]) == {"restoreformer-tiny", "gfpgan-other"}
    assert reply["FaceModels"]["restoreformer-tiny"]["Architecture"] == "RestoreFormer"
    assert reply["FaceModels"]["restoreformer-tiny"]["IsDefault"] is True
    assert reply["FaceDetectModels"]["yunet"]["IsDefault"] is True  # the only one
    assert set(reply["SegmentModels"]) == {"sam-tiny", "broken"} and "Problem" in reply["SegmentModels"]["broken"]
    assert set(reply["CaptionModels"]) == {"blip-tiny", "wd-tagger"}
    assert "Problem" not in reply["CaptionModels"]["wd-tagger"]  # a tagger beside timm's config.json
    assert reply["CaptionModels"]["blip-tiny"]["IsDefault"] is True

"""ResizeImage, RemoveBackground(+InBatch) and chaining by TaskUID through the API: every refusal at
submit names its field; what is accepted is a task of its kind, queued like a generation, charged by
its output's pixels; a `task:` reference is resolved to the bytes of an earlier result of the same key.

The fast tier: in-memory repository and store, FakeEngine, header-only model files (the workers' runs
of these kinds, on tiny real models, are tests/engine/test_tool_tasks.py).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from picserve import domain, errors
from picserve.engine.fake import FakeEngine
from tests.api.conftest import open_stack
from tests.api.conftest import request as generation
from tests.headers import write_header

#: a header-only upscaler file (the catalog reads the header; a worker would load it with spandrel)
UPSCALER = {"body.0.weight": (8, 3, 3, 3), "body.1.weight": (8,), "body.2.weight": (48, 8, 3, 3)}


def image_b64(width: int = 40, height: int = 30, colour: str = "teal", fmt: str = "PNG", mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def tool_settings(settings):
    root = settings.models_dir
    write_header(root / "upscale" / "4x-tiny.safetensors", UPSCALER)
    (root / "upscale" / "4x-tiny.json").write_text(json.dumps({"Architecture": "RealESRGAN Compact", "Scale": 4}))
    write_header(root / "upscale" / "2x-other.safetensors", UPSCALER)
    (root / "upscale" / "broken.pth").write_bytes(b"not a torch file")
    (root / "background").mkdir()
    (root / "background" / "birefnet-tiny.onnx").write_bytes(b"\x08\x08\x12\x04test")
    (root / "background" / "isnet-other.onnx").write_bytes(b"\x08\x08\x12\x04test")
    (root / "background" / "birefnet-tiny.json").write_text(json.dumps({"Default": True}))
    (root / "background" / "damaged.onnx").write_bytes(b"<html>")
    return settings.evolve(default_upscaler="4x-tiny")


@pytest.fixture
def tools(tool_settings):
    with open_stack(tool_settings) as opened:
        yield opened


def refused(client, action: str, **params) -> errors.PicserveError:
    with pytest.raises(errors.ClientError) as caught:
        client.call(action, **params)
    return caught.value


# --- ResizeImage ---------------------------------------------------------------------------------
def test_resize_image_is_a_task_charged_by_the_output_megapixels(tools):
    client = tools.client()
    uid = client.call("ResizeImage", Image=image_b64(512, 256), Width=2048, Height=1024)["TaskUID"]
    [task] = tools.api.portal.call(tools.repo.get_many, [uid], client.public_key)
    spec = task.spec
    assert isinstance(spec, domain.UpscaleSpec) and task.action == "ResizeImage"
    assert (spec.width, spec.height, spec.source_width, spec.source_height) == (2048, 1024, 512, 256)
    assert spec.model_code == "4x-tiny" and spec.model_scale == 4 and spec.passes == 1  # the setting's default
    assert task.cost == 2  # 2048×1024 = 2.1 MP at the default divisor (1 MP), rounded up
    assert spec.image is None and spec.image_key is not None  # waits in the store, not in the row


def test_scale_stands_for_width_and_height_and_lanczos_names_no_model(tools):
    client = tools.client()
    uid = client.call("ResizeImage", Image=image_b64(100, 50), Scale=2.5, UpscaleModel="lanczos")["TaskUID"]
    [task] = tools.api.portal.call(tools.repo.get_many, [uid], client.public_key)
    assert (task.spec.width, task.spec.height, task.spec.model_code) == (250, 125, None)


def test_a_downscale_loads_no_model(tools):
    client = tools.client()
    uid = client.call("ResizeImage", Image=image_b64(400, 300), Width=200, Height=150, UpscaleModel="4x-tiny")
    [task] = tools.api.portal.call(tools.repo.get_many, [uid["TaskUID"]], client.public_key)
    assert task.spec.model_code is None and task.spec.passes == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"Width": 128}, "Height: required (64..4096); give Width and Height, or picserve's Scale instead"),
        ({}, "Width: required"),
        ({"Width": 128, "Height": 128, "Scale": 2}, "Scale: give Width and Height, or Scale, not both"),
        ({"Width": 5000, "Height": 128}, "Width"),
        ({"Width": 32, "Height": 128}, "Width"),
        ({"Scale": 8.0}, "Scale: 8 makes 40x30 into 320x240"),  # fits: not refused (checked below)
        ({"Scale": 0.5}, "Scale"),
        ({"Width": 128, "Height": 128, "UpscaleModel": "nope"}, "UpscaleModel 'nope' is not on this server"),
        ({"Width": 128, "Height": 128, "UpscaleModel": "broken"}, "UpscaleModel 'broken' cannot be used"),
        ({"Width": 128, "Height": 128, "Width2": 1}, "Width2"),
    ],
)
def test_resize_image_refusals_name_the_field(tools, params, message):
    client = tools.client()
    if params == {"Scale": 8.0}:
        assert client.call("ResizeImage", Image=image_b64(), **params)["TaskUID"]
        return
    assert message in refused(client, "ResizeImage", Image=image_b64(), **params).message


def test_a_scale_past_4096_says_how_far_this_image_goes(tools):
    error = refused(tools.client(), "ResizeImage", Image=image_b64(1000, 500), Scale=5)
    assert (
        "Scale: 5 makes 1000x500 into 5000x2500; each side must be 64..4096 (this image takes Scale from 1.00 to 4.10)"
        in (error.message)
    )


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("bm90IGFuIGltYWdl", "Image: not a readable PNG, JPEG or WebP image"),
        ("%%%", "Image: not valid base64"),
        (image_b64(fmt="GIF"), "Image: GIF images are not accepted"),
    ],
)
def test_a_non_image_is_refused_at_submit(tools, image, message):
    assert message in refused(tools.client(), "ResizeImage", Image=image, Width=128, Height=128).message


def test_an_image_above_the_pixel_limit_is_refused_before_its_pixels_are_decoded(tools):
    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")  # 30 MP, a few KB of PNG
    text = base64.b64encode(buffer.getvalue()).decode()
    assert "Image: 6000x5000 is too large" in refused(tools.client(), "ResizeImage", Image=text, Scale=1).message


# --- RemoveBackground ----------------------------------------------------------------------------
def test_remove_background_takes_the_sidecar_default_and_keeps_the_spec_fields(tools):
    client = tools.client()
    uid = client.call(
        "RemoveBackground",
        RawImage="data:image/png;base64," + image_b64(300, 200),
        Box=[10, 20, 110, 120],
        ErodeSize=5,
        ForegroundThreshold=200,
        BackgroundThreshold=30,
        HairOptimization="on",
        OnlyMask=True,
    )["TaskUID"]
    [task] = tools.api.portal.call(tools.repo.get_many, [uid], client.public_key)
    spec = task.spec
    assert isinstance(spec, domain.CutoutSpec)
    assert spec.model_code == "birefnet-tiny" and spec.box == (10, 20, 110, 120) and spec.sizes == ((300, 200),)
    assert (spec.erode_size, spec.foreground_threshold, spec.background_threshold) == (5, 200, 30)
    assert spec.hair == "on" and spec.only_mask and task.cost == 1


def test_a_batch_is_one_task_with_one_image_per_input_in_order(tools):
    client = tools.client()
    sizes = [(64, 64), (1200, 1000), (50, 80)]
    uid = client.call("RemoveBackgroundsInBatch", RawImages=[image_b64(w, h) for w, h in sizes])["TaskUID"]
    [task] = tools.api.portal.call(tools.repo.get_many, [uid], client.public_key)
    assert task.spec.sizes == tuple(sizes) and task.action == "RemoveBackgroundsInBatch"
    assert task.cost == 1 + 2 + 1  # 1.2 MP rounds up to 2
    assert len(task.spec.images_keys) == 3 and all(task.spec.images_keys)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"Box": [10, 10, 5, 20]}, "Box: [10,10,5,20] is empty or inverted"),
        ({"Box": [0, 0, 41, 30]}, "Box: [0,0,41,30] is outside the 40x30 image"),
        ({"Box": [-1, 0, 10, 10]}, "Box: [-1,0,10,10] is outside"),
        ({"Box": [1, 2, 3]}, "Box"),
        ({"ForegroundThreshold": 256}, "ForegroundThreshold"),
        ({"BackgroundThreshold": -1}, "BackgroundThreshold"),
        ({"ErodeSize": 41}, "ErodeSize"),
        ({"BackgroundThreshold": 200, "ForegroundThreshold": 100}, "BackgroundThreshold 200 must be below"),
        ({"HairOptimization": "maybe"}, "HairOptimization"),
        ({"OnlyMask": "true"}, "OnlyMask: must be a JSON bool"),
        ({"BackgroundModel": "nope"}, "BackgroundModel 'nope' is not on this server"),
        ({"BackgroundModel": "damaged"}, "BackgroundModel 'damaged' cannot be used: damaged.onnx is not an ONNX model"),
    ],
)
def test_remove_background_refusals_name_the_field(tools, params, message):
    assert message in refused(tools.client(), "RemoveBackground", RawImage=image_b64(), **params).message


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "RawImages"),
        ([image_b64()] * 17, "RawImages"),
        ([image_b64(), "bm90IGFuIGltYWdl"], "RawImages[1]: not a readable PNG, JPEG or WebP image"),
    ],
)
def test_batch_refusals_name_the_entry(tools, images, message):
    assert message in refused(tools.client(), "RemoveBackgroundsInBatch", RawImages=images).message


def test_a_batch_has_no_box(tools):
    error = refused(tools.client(), "RemoveBackgroundsInBatch", RawImages=[image_b64()], Box=[0, 0, 5, 5])
    assert "Box" in error.message


def test_with_no_background_model_installed_the_refusal_says_how_to_get_one(settings):
    with open_stack(settings) as stack:
        error = refused(stack.client(), "RemoveBackground", RawImage=image_b64())
    assert "BackgroundModel: none given, and this server has no default (installed: none)" in error.message


# --- chaining by TaskUID ---------------------------------------------------------------------------
def test_a_chained_image_is_the_stored_result_of_the_same_keys_finished_task(tools):
    client = tools.client()
    generated = client.generate_images_sdxl(**generation(Width=64, Height=72))
    tools.run_worker(FakeEngine())
    [done] = client.list_tasks_details([generated])
    result = tools.store.get(
        tools.api.portal.call(tools.repo.get_many, [generated], client.public_key)[0].result_keys[0]
    )

    chained = client.call("ResizeImage", Image=f"task:{generated}/0", Scale=2, UpscaleModel="Lanczos")["TaskUID"]
    uploaded = client.call("ResizeImage", Image=base64.b64encode(result).decode(), Scale=2, UpscaleModel="Lanczos")[
        "TaskUID"
    ]
    chained_task, uploaded_task = tools.api.portal.call(tools.repo.get_many, [chained, uploaded], client.public_key)
    assert done["Status"] == "Finished"
    assert tools.store.get(chained_task.spec.image_key) == tools.store.get(uploaded_task.spec.image_key) == result
    assert chained_task.spec == domain.UpscaleSpec(
        **{**uploaded_task.spec.to_dict(), "image_key": chained_task.spec.image_key}
    )


def test_chain_refusals_name_the_field(tools):
    owner, other = tools.client(), tools.client()
    generated = owner.generate_images_sdxl(**generation(Width=64, Height=72, BatchSize=2))
    queued_uid = owner.generate_images_sdxl(**generation(Width=64, Height=72))  # never run below
    tools.run_worker(FakeEngine())  # runs both: queue the unfinished one after
    queued = owner.generate_images_sdxl(**generation(Width=64, Height=72))
    assert queued_uid
    cases = [
        (
            owner,
            f"task:{generated}/2",
            "Image: task " + generated + " has 2 result image(s) (indexes 0..1); got index 2",
        ),
        (owner, f"task:{queued}/0", f"Image: task {queued} is Queuing; a reference names a Finished task's result"),
        (other, f"task:{generated}/0", f"Image: task {generated!r} not found"),
        (owner, "task:nope/0", "Image: task 'nope' not found"),
        (owner, f"task:{generated}", "Image: 'task:" + generated + "' is not a task reference"),
    ]
    for client, reference, message in cases:
        assert message in refused(client, "ResizeImage", Image=reference, Scale=2).message, reference


def test_a_chained_result_that_expired_is_refused(tools):
    client = tools.client()
    generated = client.generate_images_sdxl(**generation(Width=64, Height=72))
    tools.run_worker(FakeEngine())
    [task] = tools.api.portal.call(tools.repo.get_many, [generated], client.public_key)
    tools.store.delete(task.result_keys[0])
    error = refused(client, "RemoveBackground", RawImage=f"task:{generated}/0")
    assert f"RawImage: image 0 of task {generated} is no longer stored (results are kept 24 h)" in error.message


def test_a_batch_and_a_generation_chain_entry_by_entry(tools):
    client = tools.client()
    generated = client.generate_images_sdxl(**generation(Width=64, Height=72, BatchSize=2))
    tools.run_worker(FakeEngine())
    uid = client.call("RemoveBackgroundsInBatch", RawImages=[f"task:{generated}/1", image_b64(), f"task:{generated}/0"])
    [task] = tools.api.portal.call(tools.repo.get_many, [uid["TaskUID"]], client.public_key)
    assert task.spec.sizes == ((64, 72), (40, 30), (64, 72))
    img2img = generation(
        Width=64,
        Height=72,
        ImageAndMaskList=[f"task:{generated}/0"],
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.5},
    )
    assert client.generate_images_sdxl(**img2img)
    error = refused(client, "RemoveBackgroundsInBatch", RawImages=[image_b64(), f"task:{generated}/5"])
    assert "RawImages[1]: task" in error.message


# --- ListModels --------------------------------------------------------------------------------------
def test_list_models_lists_upscalers_and_background_models_and_flags_broken_files(tools):
    reply = tools.client().list_models()
    upscalers, backgrounds = reply["UpscaleModels"], reply["BackgroundModels"]
    assert upscalers["4x-tiny"] == {
        "Name": "4x-tiny",
        "ModelCode": "4x-tiny",
        "IsOfficial": False,
        "Architecture": "RealESRGAN Compact",
        "Scale": 4,
        "IsDefault": True,  # PICSERVE_DEFAULT_UPSCALER
    }
    assert upscalers["2x-other"]["Scale"] == 2 and upscalers["2x-other"]["Architecture"] is None
    assert "Problem" in upscalers["broken"] and not upscalers["2x-other"]["IsDefault"]
    assert backgrounds["birefnet-tiny"]["Session"] == "birefnet-general" and backgrounds["birefnet-tiny"]["IsDefault"]
    assert backgrounds["isnet-other"]["Session"] == "isnet-general-use"
    assert backgrounds["damaged"]["Problem"] == "damaged.onnx is not an ONNX model"

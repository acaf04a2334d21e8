"""Submit-time checks that need the model files' headers: ClipSkip depth, inpainting models, sub-model fit,
and the bounds on ImageAndMaskList. Each refusal names the field; nothing refused is ever queued."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from picserve import catalog, errors, reference_images
from picserve.api.app import create_app
from picserve.sdk import Client
from picserve.services import Services
from picserve.specs import generation as generate_images_sdxl
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from tests import fuzzing
from tests.headers import (
    SD1_EMBEDDING,
    SD1_LORA_TEXT_ONLY,
    SDXL_LORA_UNET_ONLY,
    sdxl_main,
    write_header,
)

from .conftest import MODEL, request


@pytest.fixture
def models_folder(models_folder):
    """The fast tier's models, plus mains whose headers tell their depth and channels, and SD1 sub-models."""
    write_header(models_folder / "main" / "xl-full.safetensors", sdxl_main(text_layers=12))
    write_header(models_folder / "main" / "xl-shallow.safetensors", sdxl_main(text_layers=6))
    write_header(models_folder / "main" / "xl-inpaint.safetensors", sdxl_main(in_channels=9))
    write_header(models_folder / "lora" / "sd1-text.safetensors", SD1_LORA_TEXT_ONLY)
    write_header(models_folder / "lora" / "xl-unet.safetensors", SDXL_LORA_UNET_ONLY)
    write_header(models_folder / "embedding" / "sd1-emb.safetensors", SD1_EMBEDDING)
    write_header(models_folder / "embedding" / "xl-half.safetensors", {"clip_l": (2, 768)})
    return models_folder


def png(width: int = 8, height: int = 8, mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def refused(stack, client, code: int, **fields) -> str:
    """The message of the refusal of `fields` with RetCode `code`; nothing was queued."""
    with pytest.raises(errors.PicserveError) as caught:
        client.generate_images_sdxl(**request(**fields))
    assert caught.value.ret_code == code, caught.value.message
    assert stack.api.portal.call(stack.repo.queued_count) == 0
    return caught.value.message


def main(code: str, **params: object) -> dict[str, object]:
    return {"ModelCode": code, "InferenceParams": {"Steps": 10, **params}}


# --- ClipSkip and inpainting models: from the header, at submit (once 501s in the worker) -------------------
def test_clip_skip_deeper_than_the_text_encoder_is_refused(stack, client):
    message = refused(stack, client, 160, MainModel=main("xl-shallow", ClipSkip=7))
    assert message == "MainModel.InferenceParams.ClipSkip: must be between 1 and 6 for model 'xl-shallow' (got 7)"
    client.generate_images_sdxl(**request(MainModel=main("xl-shallow", ClipSkip=6)))
    client.generate_images_sdxl(**request(MainModel=main("xl-full", ClipSkip=12)))


def test_an_inpainting_model_needs_an_image_and_a_mask(stack, client):
    inpaint = main("xl-inpaint")
    for fields in ({}, {"ImageAndMaskList": [png()], "Image2Image": {"ImageIndex": 0}}):
        message = refused(stack, client, 160, MainModel=inpaint, **fields)
        assert message.startswith("MainModel.ModelCode 'xl-inpaint' is an inpainting model (9-channel UNet)")
        assert "send an image and a mask" in message
    uid = client.generate_images_sdxl(
        **request(MainModel=inpaint, ImageAndMaskList=[png(), png(mode="L")], Image2Image={"ImageIndex": 0})
    )
    assert client.list_tasks_details([uid])[0]["Status"] == "Queuing"


# --- sub-models: every width, every part the main model needs (once they failed in the worker) -------------
@pytest.mark.parametrize(
    ("code", "start", "words"),
    [
        (
            "sd1-emb",
            "SubModelList[0].ModelCode 'sd1-emb' is a SD1 embedding and does not fit main model 'fast-xl' (SDXL)",
            "no clip_g vectors, for the second text encoder (OpenCLIP-G, 1280 wide)",
        ),
        (
            "xl-half",
            "SubModelList[0].ModelCode 'xl-half' is a SD1 embedding and does not fit main model 'fast-xl'",
            "no clip_g vectors",
        ),
        (
            "sd1-text",
            "SubModelList[0].ModelCode 'sd1-text' is a SD1 lora and does not fit main model 'fast-xl' (SDXL)",
            "none for the second text encoder (OpenCLIP-G, 1280 wide)",
        ),
    ],
)
def test_sub_models_missing_a_part_are_refused(stack, client, code, start, words):
    message = refused(stack, client, 232, SubModelList=[{"ModelCode": code}])
    assert message.startswith(start) and words in message, message


def test_list_models_agrees_with_submit(client):
    models = client.list_models()
    assert models["EmbeddingModels"]["sd1-emb"]["CompatibleMainModels"] == []
    assert models["EmbeddingModels"]["xl-half"]["CompatibleMainModels"] == []
    assert models["LoraModels"]["sd1-text"]["CompatibleMainModels"] == []
    every_main = sorted(models["MainModels"])
    assert sorted(models["LoraModels"]["xl-unet"]["CompatibleMainModels"]) == every_main
    assert sorted(models["EmbeddingModels"]["emb-xl"]["CompatibleMainModels"]) == every_main


def test_fitting_sub_models_are_used_and_an_sd1_embedding_in_a_prompt_is_not(stack, client):
    client.generate_images_sdxl(
        **request(PositivePrompts=["emb-xl, sd1-emb, a cat"], SubModelList=[{"ModelCode": "xl-unet"}])
    )
    (spec,) = stack.run_worker().calls
    assert [(s.kind, s.code) for s in spec.sub_models] == [("lora", "xl-unet"), ("embedding", "emb-xl")]


# --- ImageAndMaskList: bounded, checked before decoding, every entry used -----------------------------------
def test_at_most_eight_entries(stack, client):
    message = refused(stack, client, 160, ImageAndMaskList=["@@"] * 9, Image2Image={"ImageIndex": 0})
    assert message == (
        f"ImageAndMaskList: must hold at most {generate_images_sdxl.MAX_IMAGES} entries: an image and its mask, "
        "and each ControlNetList unit's image and mask (got 9)"
    )


def test_thousands_of_large_images_are_refused_before_decoding(stack, client):
    # Small PNGs of large dimensions: decoding them all once kept the API busy for many seconds.
    big = png(5000, 5000, "L")
    started = time.monotonic()
    message = refused(stack, client, 160, ImageAndMaskList=[big] * 200, Image2Image={"ImageIndex": 0})
    assert message.startswith("ImageAndMaskList: must hold at most 8 entries") and time.monotonic() - started < 5


def test_the_images_total_size_is_bounded(stack, client, monkeypatch):
    assert generate_images_sdxl.MAX_IMAGES_BASE64_CHARS == 48 * 1024 * 1024
    monkeypatch.setattr(generate_images_sdxl, "MAX_IMAGES_BASE64_CHARS", 100)
    message = refused(stack, client, 160, ImageAndMaskList=["A" * 60, "@" * 60], Image2Image={"ImageIndex": 0})
    assert message == "ImageAndMaskList: the images must total at most 100 base64 characters (got 120)"


@pytest.mark.parametrize(
    ("images", "i2i", "message"),
    [
        (
            ["IMG", "MASK", "@@"],
            {"ImageIndex": 0},
            "ImageAndMaskList[2]: no index refers to this entry (Image2Image.ImageIndex is 0; the mask is entry 1)",
        ),
        (
            ["@@", "IMG"],
            {"ImageIndex": 1},
            "ImageAndMaskList[0]: no index refers to this entry (Image2Image.ImageIndex is 1; there is no mask)",
        ),
        (
            ["MASK", "@@", "IMG"],
            {"ImageIndex": 2, "MaskIndex": 0},
            "ImageAndMaskList[1]: no index refers to this entry",
        ),
        (["IMG", "@@"], {"ImageIndex": 0, "MaskIndex": 0}, "Image2Image.MaskIndex 0 is the ImageIndex"),
        (["@@", "@@"], {"ImageIndex": 2}, "Image2Image.ImageIndex 2 is out of range"),
        (["IMG", "@@"], {"ImageIndex": 0}, "ImageAndMaskList[1]: not valid base64"),  # the mask is decoded
    ],
)
def test_only_referenced_entries_are_accepted_and_decoded(stack, client, images, i2i, message):
    # "@@" is not base64: an entry is decoded only after the cheap checks, and only if Image2Image uses it.
    entries = [png() if e == "IMG" else png(mode="L") if e == "MASK" else e for e in images]
    got = refused(stack, client, 160, ImageAndMaskList=entries, Image2Image=i2i)
    assert got.startswith(message), got


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
def test_awkward_image_ratios_are_accepted(stack, client, mode):
    # 126×128 into 64×64 fits 63 px wide: once queued, then failed in the worker; now it fits (see reference_images)
    uid = client.generate_images_sdxl(
        **request(
            Width=64, Height=64, ImageAndMaskList=[png(126, 128)], Image2Image={"ImageIndex": 0, "ResizeMode": mode}
        )
    )
    (spec,) = stack.run_worker().calls
    assert client.list_tasks_details([uid])[0]["Status"] == "Finished"
    image = reference_images.decode(spec.init_image, "image")
    assert reference_images.fit(image, spec.width, spec.height, spec.resize_mode).size == (64, 64)


# --- ListModels scans off the event loop -----------------------------------------------------------------
class _LoopWatchingCatalog(catalog.Catalog):
    """Records whether each lookup ran on a thread with a running event loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_loop: list[bool] = []

    def entries(self, kind: str) -> dict[str, catalog.Entry]:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().entries(kind)


def test_list_models_scans_off_the_event_loop(settings):
    watching = _LoopWatchingCatalog(settings.models_dir, ttl=0)
    repo = InMemoryRepository(in_memory_app())
    services = Services.build(settings, repo=repo, store=MemoryStore(60), catalog=watching)
    with TestClient(create_app(settings, services)) as api:
        account = api.portal.call(repo.create_key, "t", 100)
        models = Client("http://testserver", account.public_key, account.private_key, http=api).list_models()
    assert MODEL in models["MainModels"]
    assert watching.on_loop and not any(watching.on_loop)


# --- strict wire types, end to end ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"TranslatePrompts": "yes"}, 'TranslatePrompts: must be a JSON bool (true or false), got the string "yes"'),
        ({"Tiling": "true"}, 'Tiling: must be a JSON bool (true or false), got the string "true"'),
        (
            {"MainModel": main(MODEL, CFGScale=True)},
            "MainModel.InferenceParams.CFGScale: must be a JSON number, got the bool true",
        ),
        ({"Seed": "7"}, 'Seed: must be a JSON integer (a number with no fractional part), got the string "7"'),
        ({"Width": 64.5}, "Width: must be a JSON integer (a number with no fractional part), got the number 64.5"),
        ({"Image2Image": {"ImageIndex": -1}}, "Image2Image.ImageIndex: must be at least 0 (got -1)"),
        (
            {"Image2Image": {"ImageIndex": 0}},
            "Image2Image.ImageIndex 0 is out of range: ImageAndMaskList has 0 entries; send the image in it",
        ),
    ],
)
def test_wrong_types_are_refused(stack, client, fields, message):
    assert refused(stack, client, 160, **fields) == message


def test_an_integral_float_is_an_int_on_the_wire(stack, client):
    # 64.0 and 64 sign alike (spec 2.2): a client whose JSON writes 64.0 is served
    uid = client.generate_images_sdxl(**request(Width=64.0, Height=72.0, MainModel=main(MODEL, Steps=6.0)))
    (spec,) = stack.run_worker().calls
    assert (spec.width, spec.height, spec.steps) == (64, 72, 6) and client.list_tasks_details([uid])


def post_signed(stack, client, action: str, **params) -> dict:
    body = client.signed(action, **params)
    return stack.api.post("/", content=json.dumps(body), headers={"content-type": "application/json"}).json()


def test_nul_and_lone_surrogates_are_refused_before_the_signature(stack, client):
    # NUL cannot be stored by PostgreSQL; a lone surrogate has no UTF-8 form, so it cannot even be signed
    reply = post_signed(stack, client, "GenerateImagesSDXL", **request(PositivePrompts=["a\x00cat"]))
    assert (reply["RetCode"], reply["Message"]) == (
        160,
        "PositivePrompts[0]: the string holds a NUL character (\\u0000); "
        "every string must be valid Unicode without NUL",
    )
    body = {
        "Action": "ListTasksDetails",
        "PublicKey": client.public_key,
        "TaskUIDList": ["\ud800"],
        "Signature": "0" * 40,
    }
    reply = stack.api.post("/", content=json.dumps(body)).json()
    assert reply["RetCode"] == 160 and reply["Message"].startswith("TaskUIDList[0]: the string holds a lone surrogate")
    assert stack.api.portal.call(stack.repo.queued_count) == 0


@pytest.mark.parametrize("action", ["ListModels", "ListRunningTasks", "GetCreditBalance"])
def test_actions_without_fields_refuse_any(stack, client, action):
    reply = post_signed(stack, client, action, Extra=1)
    assert (reply["RetCode"], reply["Message"]) == (
        160,
        "Extra: unknown field; this action takes only Action, PublicKey, Signature and request_uuid",
    )


def test_task_uid_lists_hold_1_to_100(stack, client):
    for params, message in [
        ({"TaskUIDList": []}, "TaskUIDList: must hold 1 to 100 items (got 0)"),
        ({"TaskUIDList": ["x"] * 101}, "TaskUIDList: must hold 1 to 100 items (got 101)"),
        ({"TaskUIDList": "x"}, 'TaskUIDList: must be a JSON array, got the string "x"'),
    ]:
        for action in ("ListTasksDetails", "CancelTask"):
            reply = post_signed(stack, client, action, **params)
            assert (reply["RetCode"], reply["Message"]) == (160, message)


# --- path-like ModelCodes never reach the file system ---------------------------------------------------
PATH_LIKE = [
    "../outside",
    "../../outside",
    "../models/main/fast-xl",
    "main/fast-xl",
    "/etc/passwd",
    "C:\\outside",
    ".",
    "..",
    f"{MODEL}.safetensors",
    ".fast-xl",
]


@pytest.mark.parametrize("code", PATH_LIKE)
def test_path_like_model_codes_are_not_found(stack, client, monkeypatch, tmp_path, code):
    outside = write_header(tmp_path / "outside.safetensors", sdxl_main())  # a real model, outside the folder
    touched: list[str] = []
    for name in ("stat", "listdir", "scandir"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda path=".", *a, _real=real, **k: touched.append(str(path)) or _real(path, *a, **k)
        )
    message = refused(stack, client, 231, MainModel={"ModelCode": code})
    assert message.startswith(f"MainModel.ModelCode {code!r} is not on this server")
    message = refused(stack, client, 231, SubModelList=[{"ModelCode": code}])
    assert message.startswith(f"SubModelList[0].ModelCode {code!r} is not a LoRA")
    models = str(stack.settings.models_dir)
    assert not [p for p in touched if str(tmp_path) in p and not p.startswith(models)], touched
    assert str(outside) not in touched and "/etc/passwd" not in touched


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("x" * 256, "MainModel.ModelCode: must be at most 255 characters (got 256 characters)"),
        ("", "MainModel.ModelCode: must not be empty"),
        ("fast-xl\x00", "MainModel.ModelCode: the string holds a NUL character"),
    ],
)
def test_model_codes_no_file_can_have_are_refused(stack, client, code, message):
    reply = post_signed(stack, client, "GenerateImagesSDXL", **request(MainModel={"ModelCode": code}))
    assert reply["RetCode"] == 160 and reply["Message"].startswith(message)


# --- images, end to end: every refusal names the entry ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gif", "ImageAndMaskList[0]: GIF images are not accepted (use PNG, JPEG or WebP)"),
        ("bomb header 100000²", "ImageAndMaskList[0]: image too large (at most 26214400 pixels)"),
        ("animated webp", "ImageAndMaskList[0]: animated images are not accepted (send a single frame)"),
        ("truncated png", "ImageAndMaskList[0]: not a readable PNG image (damaged or truncated)"),
        ("text", "ImageAndMaskList[0]: not a readable PNG, JPEG or WebP image"),
    ],
)
def test_bad_images_are_refused_naming_the_entry(stack, client, name, message):
    entry = dict(fuzzing.hostile_images())[name]
    assert refused(stack, client, 160, ImageAndMaskList=[entry], Image2Image={"ImageIndex": 0}) == message
    got = refused(stack, client, 160, ImageAndMaskList=[png(), entry], Image2Image={"ImageIndex": 0})
    assert got == message.replace("[0]", "[1]")  # the mask is checked as well


@pytest.mark.parametrize("name", ["cmyk jpeg", "16-bit png", "palette png", "webp"])
def test_unusual_but_valid_images_are_used(stack, client, name):
    entry = dict(fuzzing.hostile_images())[name]
    uid = client.generate_images_sdxl(**request(ImageAndMaskList=[entry], Image2Image={"ImageIndex": 0}))
    stack.run_worker()
    assert client.list_tasks_details([uid])[0]["Status"] == "Finished"


def test_prompts_are_bounded(stack, client) -> None:
    from picserve.protocol import messages

    long_part = "x" * (messages.MAX_PROMPT_CHARS + 1)
    many = ["cat"] * (messages.MAX_PROMPT_PARTS + 1)
    halves = ["y" * (messages.MAX_PROMPT_CHARS // 2)] * 2  # each part fits; joined with ", " they do not
    for field, value, expected in [
        ("PositivePrompts", [long_part], f"PositivePrompts[0]: must be at most {messages.MAX_PROMPT_CHARS} characters"),
        ("NegativePrompts", many, f"NegativePrompts: must hold at most {messages.MAX_PROMPT_PARTS} items"),
        ("PositivePrompts", halves, f"PositivePrompts: must total at most {messages.MAX_PROMPT_CHARS} characters"),
    ]:
        reply = stack.api.post("/", json=client.signed("GenerateImagesSDXL", **request(**{field: value}))).json()
        assert reply["RetCode"] == 160 and reply["Message"].startswith(expected), reply

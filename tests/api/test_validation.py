"""Submit-time checks that need the model files' headers: ClipSkip depth, inpainting models, sub-model fit,
and the bounds on ImageAndMaskList. Each refusal names the field; nothing refused is ever queued."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from picserve import catalog, errors, reference_images
from picserve.api.actions import generate_images_sdxl
from picserve.api.app import create_app
from picserve.api.services import Services
from picserve.sdk import Client
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
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
def test_at_most_four_entries(stack, client):
    message = refused(stack, client, 160, ImageAndMaskList=["@@"] * 5, Image2Image={"ImageIndex": 0})
    assert message == (
        f"ImageAndMaskList: must hold at most {generate_images_sdxl.MAX_IMAGES} entries, an image and its mask (got 5)"
    )


def test_thousands_of_large_images_are_refused_before_decoding(stack, client):
    # Small PNGs of large dimensions: decoding them all once kept the API busy for many seconds.
    big = png(5000, 5000, "L")
    started = time.monotonic()
    message = refused(stack, client, 160, ImageAndMaskList=[big] * 200, Image2Image={"ImageIndex": 0})
    assert message.startswith("ImageAndMaskList: must hold at most 4 entries") and time.monotonic() - started < 5


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

"""The SDK's hires fix (`hires_fix`), ModifyMaskedPixels (`modify_masked_pixels`, `masked_edit`) and
RemoveContents (`remove_contents`): the bodies sent, signed as the server verifies and parsed by its wire
models; then, on the in-process picserve (FakeEngine), what the server queues and refuses, and the images of
the requested size the generation kinds finish with (FakeEngine does not run an eraser: nothing waits for one)."""

from __future__ import annotations

import io
import typing
from pathlib import Path

import pytest
from PIL import Image

from picserve import domain, errors
from picserve.protocol import messages, signature
from picserve.sdk import Client, hires_fix, image_data, image_field, masked_edit, task_image
from picserve.sdk import types as sdk_types
from picserve.specs import remove_contents
from tests.api.conftest import MODEL, Stack, own_fields, recording, request
from tests.api.test_tools import UPSCALER
from tests.api.test_tools_sdk import marked
from tests.headers import write_header

UID = "ckti5nf2h4keq8mr9n00"


def png(size: tuple[int, int] = (64, 48), colour: str = "grey", box: tuple[int, int, int, int] | None = None) -> bytes:
    """A PNG of `size` in `colour`, with `box` (x1, y1, x2, y2) white: a picture, or a mask marking the box."""
    picture = Image.new("RGB", size, colour)
    if box is not None:
        picture.paste((255, 255, 255), box)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the helpers ---------------------------------------------------------------------------------------


def test_hires_fix_sends_only_what_is_given():
    assert hires_fix() == {}
    assert hires_fix("Lanczos", 12, 0.45, (768, 432)) == {
        "Upscaler": "Lanczos",
        "Steps": 12,
        "DenoisingStrength": 0.45,
        "FirstPassWidth": 768,
        "FirstPassHeight": 432,
    }
    assert hires_fix(first_pass_width=640) == {"FirstPassWidth": 640}
    messages.HiresFixModel.model_validate(hires_fix("4x-ultrasharp", 0, 0.7, (512, 512)))
    with pytest.raises(ValueError, match="not both"):
        hires_fix(first_pass=(512, 512), first_pass_height=512)


def test_image_field_takes_every_kind_of_image(tmp_path):
    data = png()
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    uri = image_data(data)
    assert image_field(data) == image_field(path) == image_field(str(path)) == uri
    assert image_field(uri) == uri and image_field(task_image(UID, 2)) == f"task:{UID}/2"
    with Image.open(io.BytesIO(data)) as picture:
        assert image_field(picture) == uri  # a PIL image goes as PNG
    with pytest.raises(TypeError, match="an image"):
        image_field(42)


def test_masked_edit_builds_the_image_fields_and_sends_only_what_is_given(tmp_path):
    image, mask = png(), png(colour="black", box=(8, 8, 24, 24))
    plain = masked_edit(image, mask)
    assert plain == {
        "ImageAndMaskList": [image_data(image), image_data(mask)],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1},
    }

    full = masked_edit(
        task_image(UID),
        mask,
        invert_mask=True,
        mask_blur=4,
        only_masked=True,
        padding=16,
        resolution=768,
        outpaint=(32, 0, 32, 8),
        strength=0.6,
        extra_image=image,
    )
    assert full == {
        "ImageAndMaskList": [f"task:{UID}/0", image_data(mask), image_data(image)],
        "Masked": {
            "ImageIndex": 0,
            "MaskIndex": 1,
            "InvertMask": True,
            "MaskBlur": 4,
            "InpaintArea": "OnlyMasked",
            "OnlyMaskedPadding": 16,
            "OnlyMaskedResolution": 768,
        },
        "Image2Image": {"ImageIndex": 2, "ReferStrength": 0.6},
        "Outpaint": {"Left": 32, "Top": 0, "Right": 32, "Bottom": 8},
    }
    # outpainting alone: no mask, only the margins are painted
    grown = masked_edit(image, outpaint=(0, 64, 0, 0))
    assert grown["Masked"] == {"ImageIndex": 0} and grown["Outpaint"]["Top"] == 64
    assert masked_edit(image, mask, strength=0.5)["Image2Image"] == {"ImageIndex": 0, "ReferStrength": 0.5}
    for fields in (plain, full, grown):
        messages.ModifyMaskedPixels.model_validate({"MainModel": {"ModelCode": MODEL}, **fields})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give a mask"),
        ({"outpaint": (0, 0, 0, 0)}, "give a mask"),
        ({"mask": png(), "outpaint": (1, 2, 3)}, "outpaint is"),
        ({"mask": png(), "outpaint": (-1, 0, 0, 0)}, "outpaint is"),
        ({"mask": png(), "padding": 8}, "only_masked"),
    ],
)
def test_masked_edit_refuses_what_cannot_be_one(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masked_edit(png(), **kwargs)


# --- the bodies sent -----------------------------------------------------------------------------------


def test_generate_with_a_hires_fix_sends_it_signed():
    client, sent = recording()
    assert client.generate_images_sdxl(**request(Width=1536, Height=864), HiresFix=hires_fix("Latent", 0, 0.5)) == "t1"
    (body,) = sent
    assert body["Action"] == "GenerateImagesSDXL" and signature.verify(body, "priv")
    assert body["HiresFix"] == {"Upscaler": "Latent", "Steps": 0, "DenoisingStrength": 0.5}
    messages.GenerateImagesSDXL.model_validate(own_fields(body))


def test_modify_masked_pixels_and_remove_contents_send_their_fields_signed():
    client, sent = recording()
    image, mask = image_data(png()), image_data(png(colour="black", box=(0, 0, 8, 8)))
    assert (
        client.modify_masked_pixels(
            MainModel={"ModelCode": MODEL},
            PositivePrompts=["a red scarf"],
            Seed=3,
            Webhook={"Url": "https://hooks.example.com/x"},
            **masked_edit(image, mask, only_masked=True, outpaint=(16, 0, 16, 0)),
        )
        == "t1"
    )
    assert client.remove_contents(RawImage=task_image(UID), Mask=mask, InvertMask=True, MaskBlur=0) == "t1"
    assert client.remove_contents(RawImage=image, Mask=mask, MainModel={"ModelCode": MODEL}, Seed=7) == "t1"
    edit, erase, sdxl_erase = sent
    assert edit["Action"] == "ModifyMaskedPixels" and signature.verify(edit, "priv")
    assert own_fields(edit) == {
        "MainModel": {"ModelCode": MODEL},
        "PositivePrompts": ["a red scarf"],
        "Seed": 3,
        "Webhook": {"Url": "https://hooks.example.com/x"},
        "ImageAndMaskList": [image, mask],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1, "InpaintArea": "OnlyMasked"},
        "Outpaint": {"Left": 16, "Top": 0, "Right": 16, "Bottom": 0},
    }
    assert erase["Action"] == "RemoveContents" and signature.verify(erase, "priv")
    assert own_fields(erase) == {"RawImage": f"task:{UID}/0", "Mask": mask, "InvertMask": True, "MaskBlur": 0}
    assert own_fields(sdxl_erase)["MainModel"] == {"ModelCode": MODEL} and signature.verify(sdxl_erase, "priv")
    messages.ModifyMaskedPixels.model_validate(own_fields(edit))
    for body in (erase, sdxl_erase):
        messages.RemoveContents.model_validate(own_fields(body))


@pytest.mark.parametrize(
    ("shape", "model"),
    [
        (sdk_types.ModifyMaskedPixelsParams, messages.ModifyMaskedPixels),
        (sdk_types.RemoveContentsParams, messages.RemoveContents),
        (sdk_types.HiresFix, messages.HiresFixModel),
        (sdk_types.Masked, messages.MaskModel),
        (sdk_types.Outpaint, messages.OutpaintModel),
    ],
)
def test_the_new_shapes_are_the_wire_models(shape, model):
    """Every field of the wire model, no other, and required exactly where the server requires it."""
    assert set(typing.get_type_hints(shape)) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert marked(shape, typing.Required) == required
    assert "HiresFix" in typing.get_type_hints(sdk_types.GenerateImagesSDXLParams)
    assert typing.get_args(sdk_types.InpaintAreaName) == messages.INPAINT_AREAS
    assert "InpaintModels" in marked(sdk_types.ModelsReply, typing.NotRequired)


# --- on the in-process picserve --------------------------------------------------------------------------


def install_tools(models: Path) -> None:
    """An upscaler and an eraser, header-only (spandrel reads the weights when a worker loads them)."""
    write_header(models / "upscale" / "4x-test.safetensors", UPSCALER)
    write_header(models / "inpaint" / "big-lama.safetensors", {"model.1.ffc.convl2l.weight": (64, 3, 7, 7)})


def only_task(stack: Stack, client: Client, uid: str) -> domain.TaskRecord:
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)
    return task


def finished_size(stack: Stack, client: Client, uid: str) -> tuple[int, int]:
    stack.run_worker()
    detail = client.wait(uid, timeout=5, poll=0)
    assert detail["Status"] == "Finished", detail
    with Image.open(io.BytesIO(client.fetch(detail["ImgList"][0]))) as result:
        return result.size


def test_a_hires_fix_is_queued_with_its_plan_and_finishes_at_the_final_size(stack, client):
    uid = client.generate_images_sdxl(**request(Width=256, Height=192), HiresFix=hires_fix(denoising_strength=0.5))
    spec = only_task(stack, client, uid).spec
    assert isinstance(spec, domain.GenerationSpec) and spec.hires is not None
    assert (spec.hires.width, spec.hires.height) == (128, 96)  # half of Width×Height (no larger than 1024²)
    assert (spec.hires.upscaler, spec.hires.strength) == ("Latent", 0.5)
    assert finished_size(stack, client, uid) == (256, 192)


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (
            {"Image2Image": {"ImageIndex": 0}, "ImageAndMaskList": [image_data(png())]},
            errors.ParamError,
            "HiresFix: applies to text-to-image only",
        ),
        ({"HiresFix": hires_fix("nope")}, errors.ModelNotFound, "HiresFix.Upscaler 'nope' is not on this server"),
        ({"HiresFix": hires_fix(first_pass=(256, 256))}, errors.ParamError, "must be smaller than"),
        ({"HiresFix": hires_fix(denoising_strength=1.5)}, errors.ParamError, "HiresFix.DenoisingStrength"),
    ],
)
def test_hires_fix_refusals_name_the_field(client, params, error, message):
    body = {**request(Width=256, Height=192), "HiresFix": hires_fix(), **params}
    with pytest.raises(error, match=message):
        client.generate_images_sdxl(**body)


def test_an_installed_upscaler_is_a_hires_upscaler(models_folder, stack, client):
    install_tools(models_folder)
    uid = client.generate_images_sdxl(**request(Width=256, Height=256), HiresFix=hires_fix("4x-test", 8))
    hires = only_task(stack, client, uid).spec.hires
    assert hires is not None and (hires.upscaler, hires.steps) == ("4x-test", 8)


def test_modify_masked_pixels_is_queued_with_its_fields_and_finishes_at_the_images_size(stack, client):
    image, mask = png((96, 64)), png((96, 64), "black", (16, 16, 48, 40))
    fields = masked_edit(image, mask, invert_mask=False, mask_blur=6, only_masked=True, padding=8, resolution=512)
    uid = client.modify_masked_pixels(**request(Width=None, Height=None), **fields)
    task = only_task(stack, client, uid)
    spec = task.spec
    assert task.action == "ModifyMaskedPixels" and isinstance(spec, domain.GenerationSpec)
    assert (spec.mode, spec.inpaint_area, spec.masked_padding, spec.masked_resolution) == ("inpaint", "masked", 8, 512)
    assert (spec.width, spec.height, spec.mask_blur) == (96, 64, 6)
    assert finished_size(stack, client, uid) == (96, 64)


def test_outpainting_grows_the_canvas_by_the_margins(stack, client):
    uid = client.modify_masked_pixels(
        **request(Width=None, Height=None), **masked_edit(png((96, 64)), outpaint=(16, 0, 16, 8))
    )
    spec = only_task(stack, client, uid).spec
    assert isinstance(spec, domain.GenerationSpec) and spec.outpaint == (16, 0, 16, 8)
    assert finished_size(stack, client, uid) == (128, 72)


def test_an_extra_image_starts_the_masked_region(stack, client):
    image, mask = png((64, 64)), png((64, 64), "black", (0, 0, 32, 32))
    fields = masked_edit(image, mask, extra_image=png((64, 64), "red"), strength=0.8)
    uid = client.modify_masked_pixels(**request(Width=None, Height=None), **fields)
    spec = only_task(stack, client, uid).spec
    assert isinstance(spec, domain.GenerationSpec) and (spec.fill_image or spec.fill_image_key)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ImageAndMaskList": [image_data(png())], "Masked": {"ImageIndex": 0}}, "Masked.MaskIndex: send a mask"),
        (
            {"ImageAndMaskList": [image_data(png()), image_data(png((32, 32)))], "Masked": {"MaskIndex": 1}},
            "ImageAndMaskList[1]",
        ),
        (
            {"ImageAndMaskList": [image_data(png()), image_data(png(colour="black"))], "Masked": {"MaskIndex": 1}},
            "marks nothing to paint",
        ),
        ({"ImageAndMaskList": [image_data(png())], "Masked": {"MaskIndex": 3}}, "Masked.MaskIndex 3 is out of range"),
    ],
)
def test_modify_masked_pixels_refusals_name_the_field(client, fields, message):
    with pytest.raises(errors.ParamError, match=message.replace("[", r"\[").replace("]", r"\]")):
        client.modify_masked_pixels(MainModel={"ModelCode": MODEL}, **fields)


def test_remove_contents_with_an_eraser_installed_is_an_erase_task(models_folder, stack, client):
    install_tools(models_folder)
    image, mask = png((80, 60)), png((80, 60), "black", (10, 10, 30, 30))
    uid = client.remove_contents(RawImage=image_data(image), Mask=image_data(mask), MaskBlur=4)
    spec = only_task(stack, client, uid).spec
    assert isinstance(spec, domain.EraseSpec) and (spec.model_code, spec.width, spec.height) == ("big-lama", 80, 60)
    with pytest.raises(errors.ModelNotFound, match="EraseModel 'nope' is not on this server"):
        client.remove_contents(RawImage=image_data(image), Mask=image_data(mask), EraseModel="nope")
    with pytest.raises(errors.ParamError, match="EraseModel and MainModel: name one"):
        client.remove_contents(
            RawImage=image_data(image), Mask=image_data(mask), EraseModel="big-lama", MainModel={"ModelCode": MODEL}
        )


def test_remove_contents_without_an_eraser_is_an_sdxl_inpainting_of_the_masked_region(stack, client):
    image, mask = png((80, 64)), png((80, 64), "black", (10, 10, 30, 30))
    uid = client.remove_contents(RawImage=image_data(image), Mask=image_data(mask), Seed=5)
    task = only_task(stack, client, uid)
    spec = task.spec
    assert task.action == "RemoveContents" and isinstance(spec, domain.GenerationSpec)
    assert (spec.model_code, spec.inpaint_area, spec.width, spec.height) == (MODEL, "masked", 80, 64)
    assert (spec.seed, spec.prompt) == (5, remove_contents.EMPTY_SCENE_PROMPT)
    assert finished_size(stack, client, uid) == (80, 64)
    with pytest.raises(errors.ParamError, match="Mask"):
        client.remove_contents(RawImage=image_data(image), Mask=image_data(png((40, 30), "black", (0, 0, 8, 8))))


def test_an_edit_chains_on_a_generated_image(stack, client):
    generated = client.generate_images_sdxl(**request())  # 64×72
    stack.run_worker()
    mask = png((64, 72), "black", (8, 8, 40, 40))
    uid = client.modify_masked_pixels(**request(Width=None, Height=None), **masked_edit(task_image(generated), mask))
    assert finished_size(stack, client, uid) == (64, 72)
    erased = client.remove_contents(RawImage=task_image(uid), Mask=image_data(mask))
    assert finished_size(stack, client, erased) == (64, 72)

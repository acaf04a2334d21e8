"""ModifyMaskedPixels, RemoveContents and HiresFix at submit, beyond the SDK's tests
(tests/api/test_edit_sdk.py): the canvas limits of outpainting, the memory admission of the larger
pass (hires fix) and of the crop (only-masked), the stored spec read back by earlier versions' rows,
and the OpenAI edit route choosing only-masked where it helps.

The fast tier: in-memory stack, FakeEngine, header-only model files.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from picserve import domain, errors
from picserve.api import openai_compat
from picserve.specs import generation
from tests.api.conftest import MODEL
from tests.api.conftest import request as generation_request


def png(size: tuple[int, int] = (64, 64), colour: str = "white", box: tuple[int, int, int, int] | None = None) -> str:
    image = Image.new("RGB", size, colour)
    if box is not None:
        image.paste((255, 255, 255), box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def modify(**fields) -> dict:
    return {
        "MainModel": {"ModelCode": MODEL},
        "PositivePrompts": ["a cat"],
        "TranslatePrompts": False,
        "ImageAndMaskList": [png(), png(colour="black", box=(8, 8, 24, 24))],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1},
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Outpaint": {"Left": 2500}}, "Outpaint: the canvas would be 2564 px on Width"),
        ({"Outpaint": {"Top": 2561}}, "Outpaint.Top: must be between 0 and 2560"),
        ({"Outpaint": {"Left": 60}, "Width": 64}, r"Outpaint.Left \+ Right \(60 px\) leave the image 4 px .* least 8"),
        ({"Masked": {"ImageIndex": 0, "MaskIndex": 0}}, "Masked.MaskIndex 0 is the ImageIndex"),
        ({"Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 65}}, "Masked.MaskBlur: must be between 0 and 64"),
        ({"Masked": {"MaskIndex": 1, "InpaintArea": "Elsewhere"}}, "Masked.InpaintArea"),
        (
            {"ImageAndMaskList": [png(), png(colour="black", box=(0, 0, 8, 8)), png()]},
            r"ImageAndMaskList\[2\]: no index",
        ),
        ({"Image2Image": {"ImageIndex": 1}}, "Image2Image.ImageIndex 1 is the mask"),
        ({"Image2Image": {"ImageIndex": 0, "MaskIndex": 1}}, "Image2Image.MaskIndex 1: ModifyMaskedPixels takes"),
    ],
)
def test_modify_masked_pixels_refusals_name_the_field(stack, fields, message):
    with pytest.raises(errors.ClientError, match=message):
        stack.client().call("ModifyMaskedPixels", **modify(**fields))


def test_outpainting_a_large_image_defaults_to_a_canvas_within_2560(stack):
    client = stack.client()
    uid = client.call(
        "ModifyMaskedPixels", **modify(ImageAndMaskList=[png((3000, 1000))], Masked={}, Outpaint={"Left": 60})
    )
    [task] = stack.api.portal.call(stack.repo.get_many, [uid["TaskUID"]], client.public_key)
    spec = task.spec
    assert isinstance(spec, domain.GenerationSpec)
    assert (spec.width, spec.height, spec.outpaint) == (2560, 833, (60, 0, 0, 0))  # the image brought down to fit


def test_an_inverted_all_white_mask_marks_nothing(stack):
    with pytest.raises(errors.ParamError, match="the mask is all white"):
        stack.client().call(
            "ModifyMaskedPixels", **modify(Masked={"MaskIndex": 1, "InvertMask": True}, ImageAndMaskList=[png(), png()])
        )


def test_remove_contents_refuses_an_empty_mask_and_names_what_to_install(stack):
    client = stack.client()
    with pytest.raises(errors.ParamError, match="Mask: the mask is all black"):
        client.call("RemoveContents", RawImage=png(), Mask=png(colour="black"))
    with pytest.raises(errors.ParamError, match="MaskBlur: must be between 0 and 64"):
        client.call("RemoveContents", RawImage=png(), Mask=png(), MaskBlur=100)


def test_admission_sizes_the_larger_pass_of_a_hires_fix_and_the_crop_of_only_masked(models_folder):
    from picserve import catalog as catalog_module

    catalog = catalog_module.Catalog(models_folder, ttl=0)
    # 1024² needs about 4.5 GiB one image at a time (a tiled decode; the header-only weights), 2560² 4.75 GiB
    workers = [("cuda", int(4.6 * 1024**3))]
    small = domain.GenerationSpec(model_code=MODEL, prompt="x", width=1024, height=1024)
    generation.check_memory(small, workers, catalog)
    hires = small.evolve(width=2560, height=2560, hires=domain.Hires(1024, 1024))
    with pytest.raises(errors.ParamError, match="Width/Height: 2560×2560 needs about"):
        generation.check_memory(hires, workers, catalog)  # the second pass, at the full size
    # only-masked: a 2560² image whose masked region is generated at 1024² fits
    masked = small.evolve(width=2560, height=2560, init_image="x", mask_image="x", inpaint_area="masked")
    assert generation.largest_pass(masked) == (1024, 1024)
    generation.check_memory(masked, workers, catalog)
    with pytest.raises(errors.ParamError):
        generation.check_memory(masked.evolve(inpaint_area="whole"), workers, catalog)


def test_a_version_2_row_reads_as_a_spec_without_the_new_fields():
    row = domain.GenerationSpec(model_code=MODEL, prompt="x").to_dict()
    for name in ("hires", "invert_mask", "mask_blur", "inpaint_area", "masked_padding", "masked_resolution"):
        row.pop(name)
    row.pop("outpaint"), row.pop("fill_image"), row.pop("fill_image_key")
    spec = domain.spec_from_json("generation", 2, row)
    assert spec == domain.GenerationSpec(model_code=MODEL, prompt="x")
    fixed = domain.GenerationSpec(model_code=MODEL, prompt="x", hires=domain.Hires(64, 64, "Lanczos", 4, 0.5))
    assert domain.spec_from_json("generation", 3, fixed.to_dict()) == fixed


def _edit_fields(size: tuple[int, int], box: tuple[int, int, int, int]) -> dict:
    image = Image.new("RGBA", size, (200, 100, 50, 255))
    image.paste((0, 0, 0, 0), box)  # OpenAI's mask: transparent where to edit
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return {"image": buffer.getvalue(), "prompt": "a cat", "model": MODEL}


def test_the_openai_edit_route_is_only_masked_for_a_small_region_of_a_large_image(stack):
    services = stack.api.app.state.services
    small_region = openai_compat._edit(_edit_fields((1280, 1024), (600, 500, 700, 600)), services)
    assert small_region.action == "ModifyMaskedPixels"
    assert small_region.params["Masked"]["InpaintArea"] == "OnlyMasked"
    large_region = openai_compat._edit(_edit_fields((1280, 1024), (0, 0, 1000, 900)), services)
    assert large_region.action == "GenerateImagesSDXL"
    small_image = openai_compat._edit(_edit_fields((512, 512), (100, 100, 120, 120)), services)
    assert small_image.action == "GenerateImagesSDXL"  # the whole image is within the model's resolution
    assert generation_request()["MainModel"] == {"ModelCode": MODEL}

"""Masked edits on the tiny SDXL: only-masked inpainting keeps every pixel outside the feathered mask
identical at any image size (a mask on the border too), outpainting keeps the original pixels where the
canvas was, the inverted mask and an extra fill image; and the canvas geometry (engine/canvas.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from picserve import domain
from picserve.engine import canvas, tiny

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "steps": 4, "seed": 3, "strength": 1.0}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def edit(image: Image.Image, mask: Image.Image, **fields) -> domain.GenerationSpec:
    return domain.GenerationSpec(
        **{**BASE, "width": image.width, "height": image.height, **fields},
        init_image=b64(image),
        mask_image=b64(mask),
    )


@pytest.mark.parametrize(
    ("size", "box", "blur"),
    [
        ((100, 75), (40, 20, 70, 50), 4),  # odd sizes: not multiples of 8
        ((136, 200), (0, 150, 60, 200), 8),  # a corner: the mask touches two borders
        ((64, 64), (10, 10, 30, 30), 0),  # no feather: a hard edge
    ],
)
def test_only_masked_keeps_every_pixel_outside_the_feathered_mask(engine, size, box, blur):
    image, mask = noise(*size), box_mask(*size, box)
    result = engine.generate(
        edit(image, mask, mask_blur=blur, inpaint_area="masked", masked_padding=8, masked_resolution=96)
    ).images[0]
    assert result.size == size
    feather = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask)
    changed = (arr(result) != arr(image)).any(-1)
    assert not changed[feather == 0].any()  # bit for bit outside the feather
    assert changed[np.asarray(mask) == 255].mean() > 0.9  # and the masked region painted anew


def test_only_masked_generates_the_crop_at_the_model_resolution(engine, monkeypatch):
    sizes: list[tuple[int, int]] = []
    real = engine.denoise

    def spy(spec, *args, **kwargs):
        sizes.append((spec.width, spec.height))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engine, "denoise", spy)
    image, mask = noise(200, 160), box_mask(200, 160, (90, 70, 110, 90))
    out = engine.generate(
        edit(image, mask, mask_blur=2, inpaint_area="masked", masked_padding=6, masked_resolution=128)
    )
    assert sizes == [(128, 128)]  # the 20×20 box (+ feather, + padding) brought up to 128² px
    assert "Inpaint area: Only masked" in out.infotexts[0] and "Size: 200x160" in out.infotexts[0]


def test_whole_picture_inpainting_with_a_blur_keeps_what_the_feather_leaves(engine):
    image, mask = noise(80, 64), box_mask(80, 64, (30, 20, 50, 40))
    result = engine.generate(edit(image, mask, mask_blur=3)).images[0]
    feather = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)))
    changed = (arr(result) != arr(image)).any(-1)
    assert not changed[feather == 0].any() and changed[feather == 255].all()


def test_an_inverted_mask_paints_the_rest(engine):
    image, mask = noise(64, 64), box_mask(64, 64, (0, 0, 64, 32))  # white top half: kept when inverted
    result = engine.generate(edit(image, mask, invert_mask=True)).images[0]
    assert np.array_equal(arr(result)[:32], arr(image)[:32])
    assert (arr(result)[32:] != arr(image)[32:]).any(-1).mean() > 0.9


def test_outpainting_keeps_the_original_pixels_where_the_canvas_was(engine):
    image = noise(64, 48)
    margins = (16, 8, 24, 0)  # left, top, right, bottom
    spec = edit(image, Image.new("L", (64, 48), 0), width=64 + 40, height=48 + 8, outpaint=margins, mask_blur=4)
    result = engine.generate(spec).images[0]
    assert result.size == (104, 56)
    out = arr(result)
    assert np.array_equal(out[8:56, 16:80], arr(image))  # every original pixel, bit for bit
    # the new area is painted: not just the image's edges stretched out
    stretched = arr(canvas.prepare(spec).image)
    assert (out[:, :16] != stretched[:, :16]).any(-1).mean() > 0.5
    assert (out[:, 80:] != stretched[:, 80:]).any(-1).mean() > 0.5


def test_a_fill_image_starts_the_masked_region(engine):
    image, mask = noise(64, 64, 1), box_mask(64, 64, (16, 16, 48, 48))
    red = Image.new("RGB", (64, 64), (250, 20, 20))
    plain = engine.generate(edit(image, mask, strength=0.5)).images[0]
    filled = engine.generate(edit(image, mask, strength=0.5, fill_image=b64(red))).images[0]
    # (the tiny model's VAE is random, so "redder" means nothing: the region starts elsewhere, that is all)
    assert (arr(filled)[16:48, 16:48] != arr(plain)[16:48, 16:48]).any(-1).mean() > 0.5
    assert np.array_equal(arr(filled)[:16], arr(image)[:16])
    # the image itself as the fill changes nothing
    same = engine.generate(edit(image, mask, strength=0.5, fill_image=b64(image))).images[0]
    assert np.array_equal(arr(same), arr(plain))


# the canvas's geometry, without the model


def test_crop_box_is_the_feathered_mask_box_padded_within_the_image():
    blend = box_mask(100, 80, (40, 30, 60, 50))
    assert canvas.crop_box(blend, 8) == (32, 22, 68, 58)
    assert canvas.crop_box(box_mask(100, 80, (0, 0, 10, 80)), 16) == (0, 0, 26, 80)
    assert canvas.crop_box(Image.new("L", (100, 80), 0), 8) == (0, 0, 100, 80)


def test_process_size_keeps_the_aspect_ratio_at_the_resolution():
    assert canvas.process_size((0, 0, 40, 40), 1024) == (1024, 1024)
    assert canvas.process_size((0, 0, 200, 100), 1024) == (1448, 728)
    assert canvas.process_size((0, 0, 4000, 10), 128) == (2560, 64)  # at least 64 a side


def test_outpaint_canvas_masks_the_margins_and_feathers_outwards():
    spec = edit(noise(32, 32), Image.new("L", (32, 32), 0), width=48, height=32, outpaint=(16, 0, 0, 0), mask_blur=4)
    prepared = canvas.prepare(spec)
    mask, blend = np.asarray(prepared.mask), np.asarray(prepared.blend)
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()
    assert (blend[:, 16:] == 0).all()  # the original area is never blended
    assert blend[16, 15] < blend[16, 0] == 255  # the seam: from the pre-fill to the painted pixels
    assert np.array_equal(np.asarray(prepared.image)[:, 16:], np.asarray(noise(32, 32)))


def test_remove_contents_without_an_eraser_is_an_only_masked_sdxl_pass(engine, models_dir):
    """RemoveContents' SDXL way on the tiny model: the spec its request makes (specs/remove_contents.py, the
    generation's checks), run: the masked region repainted, every pixel outside the feathered mask kept."""
    from types import SimpleNamespace

    from picserve import catalog as catalog_module
    from picserve.protocol import messages
    from picserve.specs import masked_edit, remove_contents

    image, mask = noise(120, 90, 5), box_mask(120, 90, (50, 30, 80, 60))
    request = messages.RemoveContents(
        RawImage=b64(image), Mask=b64(mask), MaskBlur=4, MainModel=messages.Model(ModelCode=tiny.TINY_CODE), Seed=9
    )
    catalog = catalog_module.Catalog(models_dir)
    services = SimpleNamespace(catalog=catalog, translator=None, settings=SimpleNamespace(append_trigger_words=False))
    spec = masked_edit.from_request(remove_contents.as_masked_edit(request, catalog), services)  # type: ignore[arg-type]
    assert (spec.prompt, spec.inpaint_area, spec.strength, spec.seed) == (
        remove_contents.EMPTY_SCENE_PROMPT,
        "masked",
        1.0,
        9,
    )
    result = engine.generate(spec.evolve(masked_resolution=128)).images[0]  # 1024² by default: slow on a CPU
    feather = np.asarray(mask.filter(ImageFilter.GaussianBlur(4)))
    changed = (arr(result) != arr(image)).any(-1)
    assert result.size == (120, 90) and not changed[feather == 0].any() and changed[feather == 255].all()


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_an_sdxl_inpainting_checkpoint_paints_only_masked_and_outpaints(engine, area):
    """The 9-channel UNet (an SDXL inpainting checkpoint) takes the same canvas: the masked region (and the
    margins) painted, the rest kept bit for bit."""
    image, mask = noise(72, 56, 2), box_mask(72, 56, (20, 16, 44, 40))
    spec = edit(image, mask, model_code=tiny.TINY_INPAINT_CODE, mask_blur=2, inpaint_area=area, masked_resolution=96)
    spec = spec.evolve(width=72 + 16, outpaint=(16, 0, 0, 0))
    result = engine.generate(spec).images[0]
    assert result.size == (88, 56)
    out = arr(result)
    feather = np.asarray(mask.filter(ImageFilter.GaussianBlur(2)))
    inner = out[:, 16:]
    assert np.array_equal(inner[feather == 0], arr(image)[feather == 0])
    assert (inner[np.asarray(mask) == 255] != arr(image)[np.asarray(mask) == 255]).any(-1).mean() > 0.9

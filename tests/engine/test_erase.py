"""RemoveContents' eraser on the worker (engine/erase.py) with a LaMa of the real architecture and random
weights (tests/engine/lama_files.py, in the models_dir fixture): spandrel's detection, the cache, the
crop and the feathered composite (every pixel outside the feathered mask is the input's, bit for bit),
alpha, InvertMask, the pipeline with its infotext, and `models add` filing a LaMa into models/inpaint.

LaMa is 51M parameters whatever its weights: the images here are small (one erase ≈ 1 s on a CPU).
"""

from __future__ import annotations

import base64
import io
import json
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from picserve import domain, errors, modelfiles
from picserve.catalog import Catalog
from picserve.engine import erase, toolfiles

CODE = "lama-tiny-random"
SIZE = (96, 72)


@pytest.fixture(scope="module")
def erasers(models_dir) -> erase.Erasers:
    return erase.Erasers(Catalog(models_dir, ttl=0), torch.device("cpu"))


@pytest.fixture(scope="module")
def descriptor(erasers):
    return erasers.get(CODE)


def photo(size: tuple[int, int] = SIZE, mode: str = "RGB") -> Image.Image:
    """A seeded image with structure (gradients) and texture (noise)."""
    rng = np.random.default_rng(3)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    pixels = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + rng.integers(0, 50, (height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.uint8), "L"))
    return image


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int] = SIZE) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def arrays(*images: Image.Image) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in images]


def test_spandrel_detects_the_lama_file_and_erasers_keep_it(erasers, descriptor):
    import spandrel  # after picserve: its torchvision shim (picserve/torchvision_compat.py)

    assert isinstance(descriptor, spandrel.MaskedImageModelDescriptor)
    assert descriptor.architecture.name == "LaMa" and descriptor.dtype == torch.float32
    assert erasers.get(CODE) is descriptor and erasers.loaded() == [CODE]


def test_toolfiles_identifies_the_lama_file_as_an_eraser(models_dir):
    facts = toolfiles.identify(models_dir / "inpaint" / f"{CODE}.safetensors")
    assert facts.kind == "inpaint" and facts.problem is None
    assert facts.sidecar == {"Architecture": "LaMa"} and facts.details["purpose"] == "Inpainting"


def test_erase_replaces_the_mask_and_keeps_every_pixel_outside_the_feathered_mask(descriptor):
    image, mask = photo(), box_mask((40, 30, 60, 45))
    started = time.perf_counter()
    result = erase.erase(descriptor, image, mask, mask_blur=3)
    took = time.perf_counter() - started
    _filled, soft = erase.feather(mask, 3)
    before, after, weight = *arrays(image, result), np.asarray(soft)
    assert result.mode == "RGB" and result.size == image.size
    assert (weight > 0).sum() > (np.asarray(mask) > 0).sum()  # dilated and feathered beyond the drawn mask
    assert np.array_equal(after[weight == 0], before[weight == 0])
    inside = np.asarray(mask) > 0
    assert (np.abs(after - before).max(axis=-1)[inside] > 8).mean() > 0.9, "the masked pixels are replaced"
    assert took < 30, f"one erase of {SIZE} took {took:.1f} s"


def test_mask_blur_0_is_a_hard_edge_and_a_mask_on_the_border_works(descriptor):
    image, mask = photo(), box_mask((0, 0, 25, 20))  # touches the left and top edges
    result = erase.erase(descriptor, image, mask, mask_blur=0)
    before, after, inside = *arrays(image, result), np.asarray(mask) > 0
    assert np.array_equal(after[~inside], before[~inside])
    assert (np.abs(after - before).max(axis=-1)[inside] > 8).mean() > 0.9


def test_a_crop_longer_than_max_side_is_erased_small_and_brought_back(descriptor, monkeypatch):
    monkeypatch.setattr(erase, "MAX_SIDE", 48)  # the 96×72 crop runs at 48×36
    image, mask = photo(), box_mask((30, 20, 70, 50))
    result = erase.erase(descriptor, image, mask, mask_blur=2)
    _filled, soft = erase.feather(mask, 2)
    before, after, weight = *arrays(image, result), np.asarray(soft)
    assert result.size == image.size and np.array_equal(after[weight == 0], before[weight == 0])
    assert (np.abs(after - before).max(axis=-1)[np.asarray(mask) > 0] > 8).mean() > 0.9


def test_rgba_keeps_its_alpha_and_grey_comes_back_rgb(descriptor):
    image, mask = photo(mode="RGBA"), box_mask((40, 30, 60, 45))
    result = erase.erase(descriptor, image, mask, mask_blur=2)
    assert result.mode == "RGBA" and np.array_equal(
        np.asarray(result.getchannel("A")), np.asarray(image.getchannel("A"))
    )
    assert np.array_equal(
        np.asarray(result.convert("RGB")), np.asarray(erase.erase(descriptor, image.convert("RGB"), mask, 2))
    )
    grey = erase.erase(descriptor, photo().convert("L"), mask, mask_blur=2)
    assert grey.mode == "RGB"


def test_an_empty_mask_gives_the_image_back(descriptor):
    image = photo()
    assert np.array_equal(np.asarray(erase.erase(descriptor, image, Image.new("L", SIZE, 0), 8)), np.asarray(image))


def test_crop_box_grows_by_the_box_or_context_and_stays_inside():
    assert erase.crop_box((500, 500, 510, 520), (2000, 2000)) == (372, 372, 638, 648)
    assert erase.crop_box((100, 0, 500, 50), (600, 400)) == (0, 0, 600, 178)


def b64_png(image: Image.Image, parameters: str | None = None) -> str:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_pipeline_erases_the_inverted_mask_and_carries_the_infotext(erasers, descriptor):
    image = photo()
    holes = box_mask((40, 30, 60, 45))
    inverted = holes.point(lambda v: 255 - v)  # black marks the object: InvertMask
    steps: list[float] = []
    spec = domain.EraseSpec(
        width=SIZE[0],
        height=SIZE[1],
        model_code=CODE,
        invert_mask=True,
        mask_blur=2,
        image=b64_png(image, "a lighthouse\nSteps: 6, Seed: 5, Size: 96x72"),
        mask=b64_png(inverted),
    )
    generated = erase.run(types.SimpleNamespace(erasers=erasers), spec, steps.append, None)
    [result], [text] = generated.images, generated.infotexts
    assert result.size == SIZE and steps[0] == 0.0 and steps[-1] == 1.0
    assert np.array_equal(np.asarray(result), np.asarray(erase.erase(descriptor, image, holes, 2)))
    assert (
        text == "a lighthouse\nSteps: 6, Seed: 5, Size: 96x72, Postprocess erase: lama-tiny-random (LaMa), "
        "Postprocess erase mask blur: 2"
    )


def test_the_pipeline_needs_an_engine_with_erasers():
    spec = domain.EraseSpec(width=8, height=8, model_code=CODE, image="x", mask="x")
    with pytest.raises(errors.GenerationError, match="no erasers"):
        erase.run(types.SimpleNamespace(), spec, lambda _f: None, None)


def test_infotext_replaces_an_earlier_erase_and_keeps_an_upscale():
    earlier = "cat\nSteps: 6, Postprocess erase: a (LaMa), Postprocess erase mask blur: 4, Postprocess upscale to: 8x8"
    assert erase.infotext("b (LaMa)", 12, earlier) == (
        "cat\nSteps: 6, Postprocess upscale to: 8x8, Postprocess erase: b (LaMa), Postprocess erase mask blur: 12"
    )
    assert erase.infotext("b (LaMa)", 0) == "Postprocess erase: b (LaMa), Postprocess erase mask blur: 0"


def test_a_file_that_is_no_inpainting_model_is_refused_naming_its_code(tmp_path, models_dir):
    (tmp_path / "inpaint").mkdir()
    (tmp_path / "inpaint" / "not-lama.pth").symlink_to(models_dir / "upscale" / "4x-tiny-compact.pth")
    with pytest.raises(errors.ModelLoadError, match=r"eraser not-lama: .* not an inpainting model"):
        erase.Erasers(Catalog(tmp_path, ttl=0), torch.device("cpu")).get("not-lama")


def test_models_add_files_a_lama_into_inpaint_with_its_architecture(tmp_path, models_dir):
    source = models_dir / "inpaint" / f"{CODE}.safetensors"
    added = modelfiles.add(str(source), tmp_path, name="big-lama", progress=False, identify=toolfiles.identify)
    assert added.kind == "inpaint" and added.path == tmp_path / "inpaint" / "big-lama.safetensors"
    assert json.loads(added.sidecar.read_text())["Architecture"] == "LaMa"
    entry = Catalog(tmp_path, ttl=0).get("inpaint", "big-lama")
    assert entry is not None and entry.architecture == "LaMa" and entry.info.problem is None

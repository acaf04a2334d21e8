"""ControlNet units on the tiny SDXL: equal to diffusers' own SDXL ControlNet pipelines, weight 0 and
empty step ranges give the base image bit for bit, step ranges and masks change only what they should,
three units at once, Union models, every mode, and control models held and evicted by bytes."""

from __future__ import annotations

import base64
import gc
import io

import numpy as np
import pytest
import torch
from PIL import Image

from picserve import catalog, domain
from picserve.engine import controlnet, samplers, tiny
from picserve.engine.engine import Engine

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 6, "seed": 5}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def edges(w: int = 64, h: int = 64) -> Image.Image:
    """A control map: white lines on black."""
    a = np.zeros((h, w, 3), np.uint8)
    a[h // 4, :] = a[:, w // 3] = a[3 * h // 4, w // 4 : 3 * w // 4] = 255
    return Image.fromarray(a)


def half_mask(w: int = 64, h: int = 64) -> Image.Image:
    a = np.zeros((h, w), np.uint8)
    a[:, : w // 2] = 255
    return Image.fromarray(a)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def unit(**fields) -> domain.ControlUnit:
    return domain.ControlUnit(**{"model_code": "tiny-canny", **fields})


def run(engine, units=(), images=(), **fields):
    spec = domain.GenerationSpec(
        **{**BASE, **fields},
        control_units=tuple(units),
        control_images=tuple(b64(i) for i in images),
        control_images_keys=tuple(None for _ in images),
    )
    return engine.generate(spec)


def same(a, b) -> bool:
    return all(np.array_equal(arr(x), arr(y)) for x, y in zip(a.images, b.images, strict=True))


def test_one_unit_equals_diffusers_controlnet_pipeline(engine, models_dir):
    from diffusers import StableDiffusionXLControlNetPipeline

    ours = run(engine, [unit(weight=0.8)], [edges()])
    base = engine.pipelines.get(tiny.TINY_CODE)
    model = controlnet.load(
        catalog.Catalog(models_dir).get("controlnet", "tiny-canny"),
        base.base.unet.config,
        torch.float32,
        torch.device("cpu"),
    )
    pipe = StableDiffusionXLControlNetPipeline.from_pipe(base.base, controlnet=model)
    pipe.scheduler = samplers.make_scheduler("Euler", base.scheduler_config, BASE["seed"])
    theirs = pipe(
        BASE["prompt"],
        image=edges(),
        controlnet_conditioning_scale=0.8,
        width=64,
        height=64,
        num_inference_steps=BASE["steps"],
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(BASE["seed"]),
    ).images[0]
    assert np.array_equal(arr(ours.images[0]), arr(theirs))
    assert not same(ours, run(engine))  # the unit changes the image


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py): control models in the worker's dtype
def test_weight_zero_and_an_empty_step_range_give_the_base_image(engine):
    plain = run(engine)
    assert same(run(engine, [unit(weight=0.0)], [edges()]), plain)
    assert same(run(engine, [unit(start=0.5, end=0.5)], [edges()]), plain)
    # a range that holds no step of 6 (steps 3 and 4 start at 0.5 and 0.667): no residual is added
    assert same(run(engine, [unit(start=0.52, end=0.6)], [edges()]), plain)
    guided = run(engine, [unit()], [edges()])  # and a unit that runs changes it (in fp16 too: finite, decoded)
    assert not same(guided, plain) and np.asarray(guided.images[0]).std() > 1


def test_step_range_and_control_modes_change_the_image(engine):
    full = run(engine, [unit()], [edges()])
    early = run(engine, [unit(end=0.5)], [edges()])
    assert not same(full, early) and not same(early, run(engine))
    modes = [run(engine, [unit(control_mode=m)], [edges()]) for m in ("PromptMoreImportant", "ControlNetMoreImportant")]
    assert not same(modes[0], full) and not same(modes[1], full) and not same(*modes)


def test_mask_limits_the_unit_to_its_area(engine):
    plain, full = run(engine), run(engine, [unit()], [edges()])
    masked = run(engine, [unit(mask_index=1)], [edges(), half_mask()])
    inverted = run(engine, [unit(mask_index=1, invert_mask=True)], [edges(), half_mask()])
    difference = np.abs(arr(masked.images[0]) - arr(plain.images[0])).sum(axis=2)
    # the masked half moves more than the other (the UNet's receptive field spreads it some)
    assert difference[:, :32].mean() > difference[:, 32:].mean()
    assert not same(masked, full) and not same(masked, inverted)


def test_three_units_and_a_union_model(engine):
    three = run(
        engine,
        [unit(), unit(model_code="tiny-depth", image_index=1, weight=0.5), unit(image_index=0, start=0.3, weight=1.2)],
        [edges(), edges().transpose(Image.Transpose.ROTATE_90)],
    )
    assert len(three.images) == 1 and not same(three, run(engine, [unit()], [edges()]))
    union = run(engine, [unit(model_code="tiny-union", model_type="union", control_type="canny")], [edges()])
    depth = run(engine, [unit(model_code="tiny-union", model_type="union", control_type="depth")], [edges()])
    assert not same(union, depth) and not same(union, run(engine))
    both = run(
        engine,
        [
            unit(model_code="tiny-union", model_type="union", control_type="canny"),
            unit(model_code="tiny-union", model_type="union", control_type="depth", weight=0.5),
        ],
        [edges()],
    )
    assert not same(both, union)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_units_with_img2img_and_inpainting(engine, mode):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    fields = {"init_image": b64(source), "strength": 0.6}
    if mode == "inpaint":
        fields["mask_image"] = b64(half_mask())
    plain = run(engine, **fields)
    guided = run(engine, [unit()], [edges()], **fields)
    assert not same(plain, guided)
    if mode == "inpaint":  # pixels outside the inpainting mask stay the source's exactly
        assert np.array_equal(arr(guided.images[0])[:, 32:], arr(source)[:, 32:])


def test_tiling_loras_and_control_maps_returned(engine):
    lora = domain.SubModel(kind="lora", code="kohya-0", weight=0.8)
    out = run(engine, [unit()], [edges()], tiling=True, sub_models=(lora,), return_control_maps=True, batch_size=2)
    assert len(out.images) == 3 and len(out.seeds) == 2 and out.images[2].size == (64, 64)
    assert np.array_equal(arr(out.images[2]), arr(edges()))
    assert 'ControlNet 0: "Module: none, Model: tiny-canny, Weight: 1' in out.infotexts[0]
    after = run(engine)  # the model is as it was: no ControlNet, LoRA or tiling left behind
    assert same(after, run(engine))


def test_control_models_are_held_by_bytes_and_evicted_without_leaking(models_dir, config_cache):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, controlnet_memory=1)
    run(engine, [unit()], [edges()], steps=2)
    assert engine.holdings()["controlnet"] == ["tiny-canny"]
    first = engine.controlnets.used()
    run(engine, [unit(model_code="tiny-depth")], [edges()], steps=2)
    assert engine.holdings()["controlnet"] == ["tiny-depth"]  # the budget holds one: the other left
    gc.collect()
    alive = sum(1 for o in gc.get_objects() if type(o).__name__ == "ControlNetModel")
    for i in range(100):
        engine.controlnets.get(
            ["tiny-canny" if i % 2 else "tiny-depth"], engine.pipelines.get(tiny.TINY_CODE).base.unet
        )
    gc.collect()
    assert sum(1 for o in gc.get_objects() if type(o).__name__ == "ControlNetModel") <= alive
    assert engine.controlnets.counts["loads"] == 101  # the first switch finds tiny-depth held
    assert len(engine.controlnets.loaded()) == 1 and engine.controlnets.used() == first


def test_a_canny_unit_guides_by_opencvs_edges_and_returns_its_map(engine):
    import cv2

    photo = Image.fromarray(
        np.kron(np.random.default_rng(1).integers(0, 255, (8, 8, 3), np.uint8), np.ones((8, 8, 1), np.uint8))
    )
    params = {"CannyLowThreshold": 50, "CannyHighThreshold": 150, "Resolution": 64}
    out = run(engine, [unit(preprocessor="canny", preprocessor_params=params)], [photo], return_control_maps=True)
    expected = cv2.Canny(np.asarray(photo), 50, 150)
    assert np.array_equal(np.asarray(out.images[1]), np.stack([expected] * 3, axis=2))
    assert expected.any() and not same(out, run(engine, [unit()], [photo]))  # the map, not the photo, guides
    assert "Module: canny" in out.infotexts[0] and "Threshold A: 50, Threshold B: 150" in out.infotexts[0]


@pytest.mark.dtypes("float32", "float16")
def test_ip_adapter_units_guide_by_a_reference_and_leave_no_trace(engine):
    reference = Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 48, 3), np.uint8))
    plain = run(engine)
    ip = unit(model_code="tiny-ip-adapter", model_type="ipadapter", weight=0.7)
    guided = run(engine, [ip], [reference])
    assert not same(guided, plain)
    assert same(
        run(engine, [unit(model_code="tiny-ip-adapter", model_type="ipadapter", weight=0.0)], [reference]), plain
    )
    plus = unit(model_code="tiny-ip-adapter-plus", model_type="ipadapter", end=0.5)
    both = run(engine, [ip, plus, unit(image_index=1)], [reference, edges()])  # two references and a ControlNet
    assert not same(both, guided)
    assert same(run(engine), plain)  # the UNet's attention is as it was
    held = engine.holdings()["controlnet"]
    assert "tiny-ip-adapter" in held and "tiny-vit-h" not in held  # adapters by ModelCode; their encoder is no model


def test_a_union_model_loads_the_same_from_a_single_file_and_a_folder(engine):
    units = {
        code: unit(model_code=code, model_type="union", control_type="canny")
        for code in ("tiny-union", "tiny-union-folder")
    }
    assert same(*(run(engine, [u], [edges()], steps=3) for u in units.values()))


def test_an_ip_adapter_unit_with_a_mask_acts_where_it_is_white(engine):
    reference = Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), np.uint8))
    plain = run(engine)
    ip = {"model_code": "tiny-ip-adapter", "model_type": "ipadapter", "weight": 1.5}
    everywhere = run(engine, [unit(**ip)], [reference])
    masked = run(engine, [unit(**ip, mask_index=1)], [reference, half_mask()])
    inverted = run(engine, [unit(**ip, mask_index=1, invert_mask=True)], [reference, half_mask()])
    assert not same(masked, everywhere) and not same(masked, inverted) and not same(masked, plain)
    moved = np.abs(arr(masked.images[0]) - arr(plain.images[0])).sum(axis=2)
    assert moved[:, :32].mean() > moved[:, 32:].mean()  # the white (left) half moves more

"""img2img, inpainting, seamless tiling, A1111 prompts and large sizes on the tiny SDXL."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from picserve import domain
from picserve.engine import prompts, tiling, tiny
from tests.engine.dtypes import value_tolerance

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 10, "seed": 3}


def b64(image: Image.Image, fmt="PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(w=64, h=64) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run(engine, **fields):
    return engine.generate(domain.GenerationSpec(**{**BASE, **fields}))


def same_pixels(a, b) -> bool:
    """Pixel equality (PNG bytes also hold the prompt, so they differ whenever the prompt does)."""
    return all(np.array_equal(arr(x), arr(y)) for x, y in zip(a.images, b.images, strict=True))


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_img2img_strength_controls_closeness(engine):
    source = gradient()
    near = run(engine, init_image=b64(source), strength=0.3).images[0]
    far = run(engine, init_image=b64(source), strength=0.9).images[0]
    assert near.size == far.size == (64, 64)
    assert np.abs(arr(near) - arr(source)).mean() < np.abs(arr(far) - arr(source)).mean()


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
def test_img2img_resize_modes_give_the_requested_size(engine, mode):
    out = run(engine, init_image=b64(gradient(128, 64), "JPEG"), strength=0.5, resize_mode=mode, width=64, height=96)
    assert out.images[0].size == (64, 96)


def square_mask(w=64, h=64) -> Image.Image:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return Image.fromarray(mask)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
@pytest.mark.parametrize(
    ("model", "size"), [(tiny.TINY_CODE, (64, 64)), (tiny.TINY_CODE, (100, 70)), (tiny.TINY_INPAINT_CODE, (64, 64))]
)
def test_inpainting_keeps_every_unmasked_pixel(engine, model, size):
    w, h = size
    source, mask = gradient(w, h), square_mask(w, h)
    out = run(
        engine, model_code=model, init_image=b64(source), mask_image=b64(mask), strength=0.99, width=w, height=h
    ).images[0]
    keep = np.asarray(mask) == 0
    assert out.size == (w, h)
    assert np.array_equal(arr(out)[keep], arr(source)[keep])
    assert np.abs(arr(out)[~keep] - arr(source)[~keep]).mean() > 1


def test_inpaint_model_without_a_mask_is_a_broken_caller_contract(engine):
    # The API refuses it before queueing (ParamError, from the UNet's input channels): the engine only asserts.
    with pytest.raises(AssertionError, match="inpainting model"):
        run(engine, model_code=tiny.TINY_INPAINT_CODE)


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
@pytest.mark.parametrize(("source", "size"), [((126, 128), (64, 64)), ((128, 126), (64, 64)), ((1, 300), (96, 64))])
@pytest.mark.parametrize("with_mask", [False, True])
def test_img2img_and_inpainting_take_awkward_ratios(engine, mode, source, size, with_mask):
    # One pixel narrower than the frame after fitting once failed in the worker (a 0-wide fill band).
    out = run(
        engine,
        init_image=b64(gradient(*source)),
        mask_image=b64(square_mask(*source)) if with_mask else None,
        strength=0.5,
        resize_mode=mode,
        steps=2,
        width=size[0],
        height=size[1],
    )
    assert out.images[0].size == size


def _conv_modes(pipe):
    return {m.padding_mode for m in (*pipe.unet.modules(), *pipe.vae.modules()) if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_tiling_makes_a_torus_and_restores_the_pipeline(engine):
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    # Shifts are multiples of the UNet's total downsampling (4 latent px), as equivariance needs.
    latents = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(latents, shifts=(4, 8), dims=(2, 3))

    def image(lat):
        return pipe(
            "a cat",
            latents=lat.clone().to(pipe.unet.dtype),
            num_inference_steps=3,
            height=64,
            width=128,
            output_type="np",
            generator=torch.Generator().manual_seed(1),
        ).images[0]

    with tiling.seamless(pipe, True):
        assert _conv_modes(pipe) == {"circular"}
        rolled = np.roll(image(latents), shift=(32, 64), axis=(0, 1))
        assert np.abs(rolled - image(shifted)).max() < value_tolerance(engine, 1e-5)
    assert _conv_modes(pipe) == {"zeros"}
    plain = np.roll(image(latents), shift=(32, 64), axis=(0, 1))
    assert np.abs(plain - image(shifted)).max() > 1e-2  # zero padding is not a torus


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_tiling_request_changes_output_then_leaves_no_trace(engine):
    base = run(engine)
    assert not same_pixels(run(engine, tiling=True), base)
    assert same_pixels(run(engine), base)


def test_a1111_attention_parsing():
    assert prompts.parse_attention("a (cat:1.5) and [dog]") == [
        ("a ", 1.0),
        ("cat", 1.5),
        (" and ", 1.0),
        ("dog", pytest.approx(1 / 1.1)),
    ]
    assert prompts.parse_attention("((big))")[0][1] == pytest.approx(1.21)
    assert prompts.parse_attention(r"\(literal\)") == [("(literal)", 1.0)]
    assert prompts.parse_attention("one BREAK two") == [("one", 1.0), ("BREAK", -1.0), ("two", 1.0)]
    assert prompts.parse_attention("") == [("", 1.0)]


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_weighted_prompts_change_the_output(engine):
    plain = run(engine)
    assert same_pixels(run(engine, prompt="a photo of a (cat:1.0)"), plain)
    assert not same_pixels(run(engine, prompt="a photo of a (cat:1.5)"), plain)
    assert not same_pixels(run(engine, prompt="a photo of a [cat]"), plain)


def test_unweighted_embeddings_equal_diffusers(engine):
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    ours = prompts.encode(pipe, "a photo of a cat", "blurry", 1, True)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        "a photo of a cat",
        negative_prompt="blurry",
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
    )
    assert torch.equal(ours.embeds, embeds) and torch.equal(ours.negative_embeds, negative)
    assert torch.equal(ours.pooled, pooled) and torch.equal(ours.negative_pooled, negative_pooled)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_long_prompts_are_not_truncated(engine):
    long = ", ".join(["a photo of a cat on a red sofa"] * 12)  # ~100 tokens
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    assert prompts.encode(pipe, long, "", 1, True).embeds.shape[1] == 154
    # The words past token 77 still change the image: diffusers alone would drop them.
    assert not same_pixels(run(engine, prompt=long), run(engine, prompt=long + ", snow"))


def test_large_size_decodes_with_a_tiled_vae(engine):
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    out = run(engine, width=1400, height=1400, steps=1, prompt="a cat")
    assert out.images[0].size == (1400, 1400)
    assert not pipe.vae.use_tiling  # switched off again after the request

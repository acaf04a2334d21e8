"""Every GenerateImagesSDXL field through the HTTP API, on the tiny model: each one takes effect."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from picserve import errors, reference_images

from .conftest import tiny_request


def b64(image: Image.Image, fmt: str = "PNG", data_uri: bool = True) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    text = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{text}" if data_uri else text


def gradient(w=64, h=64) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def square_mask(w=64, h=64) -> Image.Image:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return Image.fromarray(mask)


def differs(a, b) -> bool:
    return a.shape != b.shape or np.abs(a - b).max() > 0


def test_prompts_negative_weights_and_long_prompts(generate):
    (base,) = generate(PositivePrompts=["a photo", "a cat"]).images
    (joined,) = generate(PositivePrompts=["a photo, a cat"]).images
    assert not differs(base, joined)  # list entries are joined as comma-separated tags
    assert differs(base, generate(PositivePrompts=["a photo", "a (cat:1.4)"]).images[0])
    assert differs(base, generate(PositivePrompts=["a photo", "a cat"], NegativePrompts=["blurry"]).images[0])
    long = ["a photo of a cat on a red sofa"] * 12
    assert differs(generate(PositivePrompts=long).images[0], generate(PositivePrompts=[*long, "snow"]).images[0])
    assert generate(PositivePrompts=[], NegativePrompts=[]).detail["Status"] == "Finished"


def test_seed_width_height_batch(generate):
    result = generate(Seed=40, Width=100, Height=70, BatchSize=3)
    images = result.images
    assert [i.shape for i in images] == [(70, 100, 3)] * 3
    assert result.detail["SeedList"] == [40, 41, 42]
    (alone,) = generate(Seed=42, Width=100, Height=70).images
    assert np.abs(images[2] - alone).max() <= 1  # image i of a batch is seed + i


@pytest.mark.parametrize("params", [{"Steps": 8}, {"CFGScale": 3.5}, {"ClipSkip": 2}, {"Sampler": "dpm++ 2m karras"}])
def test_inference_params_take_effect(generate, params):
    (base,) = generate().images
    (changed,) = generate(MainModel={"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 6, **params}}).images
    assert differs(base, changed)


def test_image2image_strength_and_resize_modes(generate):
    source = gradient()
    near = generate(
        ImageAndMaskList=[b64(source)],
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.3},
        MainModel={"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 10}},
    ).images
    far = generate(
        ImageAndMaskList=[b64(source, "JPEG", data_uri=False)],
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.9},
        MainModel={"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 10}},
    ).images
    src = np.asarray(source, dtype=np.int16)
    assert np.abs(near[0] - src).mean() < np.abs(far[0] - src).mean()
    wide = b64(gradient(128, 64), "WEBP")
    results = [
        generate(
            ImageAndMaskList=[wide],
            Width=64,
            Height=96,
            Image2Image={"ImageIndex": 0, "ReferStrength": 0.5, "ResizeMode": mode},
        ).images[0]
        for mode in ("JustResize", "CropAndResize", "ResizeAndFill")
    ]
    assert all(r.shape == (96, 64, 3) for r in results)
    assert differs(results[0], results[1]) and differs(results[1], results[2])


@pytest.mark.parametrize("layout", ["next-entry", "mask-index"])
def test_inpainting_keeps_unmasked_pixels(generate, layout):
    source, mask = gradient(96, 72), square_mask(96, 72)
    if layout == "next-entry":
        fields = {"ImageAndMaskList": [b64(source), b64(mask)], "Image2Image": {"ImageIndex": 0, "ReferStrength": 1}}
    else:
        fields = {
            "ImageAndMaskList": [b64(mask), b64(source)],
            "Image2Image": {"ImageIndex": 1, "MaskIndex": 0, "ReferStrength": 1},
        }
    (out,) = generate(Width=96, Height=72, **fields).images
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(source, dtype=np.int16)[keep])
    assert np.abs(out[~keep] - np.asarray(source, dtype=np.int16)[~keep]).mean() > 1


def test_a_mask_of_another_size_is_resized(generate):
    (out,) = generate(
        ImageAndMaskList=[b64(gradient()), b64(square_mask(32, 32))], Image2Image={"ImageIndex": 0, "ReferStrength": 1}
    ).images
    resized = reference_images.mask_for(square_mask(32, 32), 64, 64, "ResizeAndFill")  # as the server resizes it
    keep = np.asarray(resized) == 0
    assert keep.sum() > 2000 and (np.asarray(resized) == 255).sum() > 500
    assert np.array_equal(out[keep], np.asarray(gradient(), dtype=np.int16)[keep])


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
def test_awkward_image_ratios_generate(generate, mode):
    # 126×128 fits a 64×64 frame 63 px wide: a 0 px band once failed in the worker (ValueError, 501)
    for source, mask in ((gradient(126, 128), None), (gradient(128, 126), square_mask(128, 126))):
        images = [b64(source)] + ([b64(mask)] if mask is not None else [])
        result = generate(ImageAndMaskList=images, Image2Image={"ImageIndex": 0, "ResizeMode": mode})
        assert result.detail["Status"] == "Finished" and result.images[0].shape == (64, 64, 3)


def test_tiling(generate):
    (plain,) = generate().images
    (tiled,) = generate(Tiling=True).images
    assert differs(plain, tiled)
    (again,) = generate().images
    assert not differs(plain, again)  # the cached pipeline is untouched afterwards


def bomb() -> str:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, format="PNG")  # compresses to a few kB
    return base64.b64encode(buffer.getvalue()).decode()


def gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"ImageAndMaskList": [b64(gradient())] * 9, "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList: must hold at most 8 entries",
        ),
        (
            {"ImageAndMaskList": [b64(gradient()), b64(square_mask()), gif()], "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList[2]: no index refers to this entry",
        ),
        (
            {"ImageAndMaskList": ["@@not-base64@@"], "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList[0]: not valid base64",
        ),
        (
            {"ImageAndMaskList": [base64.b64encode(b"plain text").decode()], "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList[0]: not a readable PNG, JPEG or WebP image",
        ),
        (
            {"ImageAndMaskList": [bomb()], "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList[0]: 6000x6000 is too large",
        ),
        (
            {"ImageAndMaskList": [gif()], "Image2Image": {"ImageIndex": 0}},
            "ImageAndMaskList[0]: GIF images are not accepted",
        ),
        (
            {"ImageAndMaskList": [b64(gradient())], "Image2Image": {"ImageIndex": 1}},
            "Image2Image.ImageIndex 1 is out of range: ImageAndMaskList has 1 entries",
        ),
        (
            {"ImageAndMaskList": [b64(gradient())], "Image2Image": {"ImageIndex": 0, "MaskIndex": 4}},
            "Image2Image.MaskIndex 4 is out of range",
        ),
        (
            {"ImageAndMaskList": [b64(gradient())], "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.1}},
            "Image2Image.ReferStrength 0.1 × Steps 6 leaves no denoising step",
        ),
        ({"ImageAndMaskList": [b64(gradient())]}, "ImageAndMaskList: images were sent but no Image2Image"),
    ],
)
def test_bad_images_are_refused_before_queueing(make_client, fields, message):
    client = make_client()
    with pytest.raises(errors.ParamError) as info:
        client.generate_images_sdxl(**tiny_request(**fields))
    assert info.value.message.startswith(message), info.value.message
    assert client.list_running_tasks() == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 6, "ClipSkip": 5}}},
            "MainModel.InferenceParams.ClipSkip: must be between 1 and 4 for model 'picserve-tiny' (got 5)",
        ),
        (
            {"MainModel": {"ModelCode": "picserve-tiny-inpaint"}},
            "MainModel.ModelCode 'picserve-tiny-inpaint' is an inpainting model (9-channel UNet): "
            "send an image and a mask",
        ),
        (
            {
                "MainModel": {"ModelCode": "picserve-tiny-inpaint-diffusers"},
                "ImageAndMaskList": [b64(gradient())],
                "Image2Image": {"ImageIndex": 0},
            },
            "MainModel.ModelCode 'picserve-tiny-inpaint-diffusers' is an inpainting model",
        ),
    ],
)
def test_model_limits_are_refused_before_queueing(make_client, fields, message):
    # ClipSkip depth and inpainting models come from the model files' headers: once 501s in the worker.
    client = make_client()
    with pytest.raises(errors.ParamError) as info:
        client.generate_images_sdxl(**tiny_request(**fields))
    assert info.value.message.startswith(message), info.value.message
    assert client.list_running_tasks() == []

"""GenerateBackgrounds on the tiny SDXL: the canvas its spec lays out (specs/backgrounds.py) inpainted by
the engine keeps every opaque pixel of the foreground exactly, paints the rest, and with a background
image and no DeepFusion keeps that image outside the band around the subject."""

from __future__ import annotations

import numpy as np

from picserve import domain, reference_images
from picserve.engine import tiny
from picserve.protocol import messages
from picserve.specs import backgrounds
from tests.api.test_toolkit import rgba_b64
from tests.api.test_tools import image_b64


def generated(engine, **fields: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(result, canvas, mask) of a GenerateBackgrounds request with `fields`, run on the tiny model."""
    body = {"MainModel": {"ModelCode": tiny.TINY_CODE}, "TransparentForeground": {"ImageIndex": 0}, **fields}
    canvas, mask, strength = backgrounds.layout(messages.parse(messages.GenerateBackgrounds, body))
    spec = domain.GenerationSpec(
        model_code=tiny.TINY_CODE,
        prompt="a kitchen table",
        width=canvas.width,
        height=canvas.height,
        steps=3,
        seed=5,
        strength=strength,
        init_image=reference_images.png_base64(canvas),
        mask_image=reference_images.png_base64(mask),
    )
    result = engine.generate(spec).images[0]
    return np.asarray(result.convert("RGB")), np.asarray(canvas), np.asarray(mask)


def test_the_foregrounds_opaque_pixels_are_kept_and_the_background_painted(engine):
    foreground = rgba_b64(40, 30)
    result, canvas, mask = generated(engine, ImageList=[foreground], Width=72, Height=64)
    keep = mask == 0
    assert keep.sum() == 20 * 20  # the opaque square
    assert np.array_equal(result[keep], canvas[keep])
    placed = np.asarray(reference_images.decode(foreground, "f"))[5:25, 10:30, :3]
    at_x, at_y = (72 - 40) // 2 + 10, (64 - 30) // 2 + 5
    assert np.array_equal(result[at_y : at_y + 20, at_x : at_x + 20], placed)  # the subject itself
    painted = mask == 255
    assert np.abs(result[painted].astype(int) - 127).mean() > 5  # the grey start was painted over


def test_a_background_image_outside_the_band_is_kept(engine):
    backdrop = image_b64(160, 128, "navy")
    result, canvas, mask = generated(
        engine,
        ImageList=[rgba_b64(40, 30), backdrop],
        Width=160,
        Height=128,
        BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 0.5},
    )
    kept = mask == 0
    assert kept.mean() > 0.5 and np.array_equal(result[kept], canvas[kept])
    assert (result[0, 0] == (0, 0, 128)).all()

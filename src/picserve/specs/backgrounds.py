"""GenerateBackgrounds (§6.6) as a generation: a new background painted around a transparent foreground
by SDXL inpainting of everything outside the subject, the subject's pixels kept.

At submit the canvas is laid out and becomes the GenerateImagesSDXL params of an inpainting, checked by
the generation kind (specs/generation.py); the task keeps its own Action.

- **The foreground** (`TransparentForeground`, an RGBA entry of `ImageList`) is scaled by `Scale`
  (default 1, or what fits a Width×Height it is larger than) and placed with its top-left corner at `X`,
  `Y` (default: centred). The canvas is Width×Height, by default the scaled foreground's size. The
  foreground must have transparency, must not be transparent everywhere, and must lie on the canvas.
- **The background under it**: without `BackgroundImage2Image`, mid-grey, painted anew (strength 1).
  With it, that image fitted to the canvas by its ResizeMode, redrawn by its ReferStrength (img2img's
  denoising strength, 0.3 by default): with `DeepFusion`, all of it; without, only a band around the
  subject (BAND_SHARE of the canvas's shorter side, at least BAND_MIN px), the rest of the background
  image kept as it is.
- **The mask** is the inverse of the placed foreground's alpha (white = paint), with no blur: where the
  foreground is opaque the result is the foreground's pixels exactly; its soft edge (alpha between) is
  blended with what was painted by its alpha.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import check_index, generation
from picserve.specs.masked_edit import MAX_SIDE, scaled_to_fit

__all__ = ["BAND_MIN", "BAND_SHARE", "Layout", "from_request", "layout"]

#: without DeepFusion, the band around the subject that is redrawn: this share of the canvas's shorter
#: side, at least BAND_MIN px
BAND_SHARE = 0.05
BAND_MIN = 16
#: the background a request without a background image starts from (painted over entirely)
_GREY = (127, 127, 127)


def from_request(request: messages.GenerateBackgrounds, services: Services) -> domain.GenerationSpec:
    canvas, mask, strength = layout(request)
    params = messages.GenerateImagesSDXL.model_construct(
        **generation.base_fields(request),
        Width=canvas.width,
        Height=canvas.height,
        BatchSize=request.BatchSize,
        Tiling=False,
        ImageAndMaskList=[reference_images.png_base64(canvas), reference_images.png_base64(mask)],
        Image2Image=messages.Image2ImageModel(
            ImageIndex=0, MaskIndex=1, ReferStrength=strength, ResizeMode="JustResize"
        ),
        ControlNetList=None,
        ReturnControlMaps=False,
        HiresFix=None,
        Webhook=request.Webhook,
    )
    return generation.from_request(params, services).evolve(mask_blur=0, invert_mask=False, inpaint_area="whole")


@dataclass(frozen=True)
class Layout:
    """Where the scaled foreground goes on the canvas (pure geometry): the canvas's size, the scaled
    foreground's, and its top-left corner."""

    canvas: tuple[int, int]
    size: tuple[int, int]
    at: tuple[int, int]


def layout(request: messages.GenerateBackgrounds) -> tuple[Image.Image, Image.Image, float]:
    """The canvas the inpainting starts from (RGB: the background with the foreground over it), its mask
    (L: white = paint) and the denoising strength."""
    images, fg_field, bg = request.ImageList, request.TransparentForeground, request.BackgroundImage2Image
    check_index("TransparentForeground.ImageIndex", fg_field.ImageIndex, images, "ImageList")
    if bg is not None:
        check_index("BackgroundImage2Image.ImageIndex", bg.ImageIndex, images, "ImageList")
        if bg.ImageIndex == fg_field.ImageIndex:
            raise errors.ParamError(
                f"BackgroundImage2Image.ImageIndex {bg.ImageIndex} is the foreground (TransparentForeground."
                "ImageIndex); send the background image as another ImageList entry"
            )
    used = {fg_field.ImageIndex, *((bg.ImageIndex,) if bg is not None else ())}
    if unused := [i for i in range(len(images)) if i not in used]:
        raise errors.ParamError(
            f"ImageList[{unused[0]}]: no index refers to this entry (TransparentForeground.ImageIndex, "
            "BackgroundImage2Image.ImageIndex)"
        )
    name = f"ImageList[{fg_field.ImageIndex}] (TransparentForeground)"
    foreground = reference_images.decode(images[fg_field.ImageIndex], name)
    alpha = _alpha(foreground, name)
    place = _place(request, foreground.size)
    scaled = foreground.convert("RGBA")
    if place.size != foreground.size:
        scaled = scaled.resize(place.size, Image.Resampling.LANCZOS)
        alpha = alpha.resize(place.size, Image.Resampling.LANCZOS)
    width, height = place.canvas
    placed_alpha = Image.new("L", place.canvas, 0)
    placed_alpha.paste(alpha, place.at)
    if bg is None:
        background, strength = Image.new("RGB", place.canvas, _GREY), 1.0
    else:
        raw = reference_images.decode(images[bg.ImageIndex], f"ImageList[{bg.ImageIndex}] (BackgroundImage2Image)")
        background, strength = reference_images.fit(raw, width, height, bg.ResizeMode), bg.ReferStrength
    layer = Image.new("RGBA", place.canvas, (0, 0, 0, 0))
    layer.paste(scaled, place.at)
    layer.putalpha(placed_alpha)
    canvas = Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")
    paint = 255 - np.asarray(placed_alpha, dtype=np.uint8)
    if bg is not None and not bg.DeepFusion:
        paint = np.where(_near(np.asarray(placed_alpha) > 0, _band(width, height)), paint, 0).astype(np.uint8)
    return canvas, Image.fromarray(paint, "L"), strength


def _alpha(foreground: Image.Image, name: str) -> Image.Image:
    if foreground.mode not in ("RGBA", "LA"):
        raise errors.ParamError(
            f"{name}: the foreground has no alpha channel ({foreground.mode}); send a PNG or WebP whose "
            "transparent pixels mark the background (a RemoveBackground or ExtractContents result is one)"
        )
    alpha = foreground.getchannel("A")
    low, high = alpha.getextrema()
    if low == 255:
        raise errors.ParamError(f"{name}: the foreground is opaque everywhere; nothing is left for a background")
    if high == 0:
        raise errors.ParamError(f"{name}: the foreground is transparent everywhere; it holds no subject")
    return alpha


def _place(request: messages.GenerateBackgrounds, size: tuple[int, int]) -> Layout:
    fg = request.TransparentForeground
    scale = fg.Scale
    if scale is None:  # 1, or what fits a canvas the foreground is larger than
        scale = min(1.0, (request.Width or size[0]) / size[0], (request.Height or size[1]) / size[1])
    scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    width, height = request.Width, request.Height
    if width is None or height is None:
        fit_w, fit_h = scaled_to_fit(scaled, MAX_SIDE, MAX_SIDE)
        width, height = width or fit_w, height or fit_h
    if scaled[0] > width or scaled[1] > height:
        raise errors.ParamError(
            f"TransparentForeground.Scale: the foreground scaled by {messages.shown(scale)} is "
            f"{scaled[0]}x{scaled[1]}, larger than the {width}x{height} canvas; use a Scale of at most "
            f"{min(width / size[0], height / size[1]):.3f}"
        )
    at = []
    for axis, given, side, inner in (("X", fg.X, width, scaled[0]), ("Y", fg.Y, height, scaled[1])):
        if given is None:
            at.append((side - inner) // 2)
        elif not 0 <= given <= side - inner:
            raise errors.ParamError(
                f"TransparentForeground.{axis} {messages.shown(given)}: the {inner} px foreground must lie on the "
                f"{side} px canvas ({axis} from 0 to {side - inner})"
            )
        else:
            at.append(given)
    return Layout((width, height), scaled, (at[0], at[1]))


def _band(width: int, height: int) -> int:
    return max(BAND_MIN, round(BAND_SHARE * min(width, height)))


def _near(subject: np.ndarray, distance: int) -> np.ndarray:
    """The pixels within `distance` px (a square's reach) of any pixel of `subject`."""
    ndimage = importlib.import_module("scipy.ndimage")  # untyped; a separable filter, fast at any distance
    return np.asarray(ndimage.maximum_filter(subject.astype(np.uint8), size=2 * distance + 1) > 0)

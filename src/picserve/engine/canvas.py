"""What an inpainting paints on, and where the result goes back: pure image geometry, no torch.

`prepare` builds a spec's `Canvas`: the image fitted to its place (inside the outpainting margins),
the margins pre-filled from the image's edges (stretched, then blurred into a smooth field), the drawn
mask (inverted when asked) and the margins as the area to paint, and `blend`, that area feathered by
`mask_blur` (a Gaussian blur, A1111's mask blur): the result is mixed into the image by it, so pixels
where it is 0 stay the input's, bit for bit. In the margins the feather runs outwards from the
original image, whose pixels are all kept.

`crop_box` and `paste` are only-masked inpainting (A1111's "inpaint area: only masked"): the feathered
mask's bounding box plus padding is generated alone, at about the model's resolution, and pasted back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from picserve import domain, reference_images

__all__ = ["Canvas", "crop_box", "paste", "prepare", "process_size"]


@dataclass(frozen=True)
class Canvas:
    """An inpainting's input at the spec's width×height."""

    #: RGB: the image in place, the margins pre-filled, an extra fill image in the masked region
    image: Image.Image
    #: L: what the model repaints (white), hard-edged: the drawn mask and the margins
    mask: Image.Image
    #: L: how the result is blended into `image`: `mask` feathered
    blend: Image.Image


def prepare(spec: domain.GenerationSpec) -> Canvas:
    """The canvas of an inpainting spec (`spec.mode == "inpaint"`)."""
    assert spec.init_image is not None and spec.mask_image is not None, "an inpainting carries its image and mask"
    left, top, right, bottom = spec.outpaint
    inner = (spec.width - left - right, spec.height - top - bottom)
    image = reference_images.fit(reference_images.decode(spec.init_image, "image"), *inner, spec.resize_mode)
    drawn = reference_images.mask_for(reference_images.decode(spec.mask_image, "mask"), *inner, spec.resize_mode)
    if spec.invert_mask:
        drawn = ImageOps.invert(drawn)
    if spec.fill_image is not None:  # an extra image starts the masked region
        fill = reference_images.fit(reference_images.decode(spec.fill_image, "fill image"), *inner, spec.resize_mode)
        image = Image.composite(fill, image, drawn)
    blend = _feathered(drawn, spec.mask_blur)
    if spec.outpaint == domain.NO_MARGINS:
        return Canvas(image.convert("RGB"), drawn, blend)

    pixels = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    stretched = Image.fromarray(pixels)
    kept = Image.new("L", (spec.width, spec.height), 0)  # white where the original image is
    kept.paste(255, (left, top, left + inner[0], top + inner[1]))
    margins = ImageOps.invert(kept)
    # the stretched edges, blurred into a smooth field: what the new area starts from
    smooth = stretched.filter(ImageFilter.GaussianBlur(max(4, max(spec.outpaint) // 4)))
    canvas = Image.composite(smooth, stretched, margins)
    mask = _placed(drawn, kept, left, top)
    mask = ImageChops.lighter(mask, margins)
    # the drawn mask's feather as asked; the margins' runs outwards from the seam (from the pre-fill to the
    # generated pixels), so every original pixel is kept
    feather = ImageChops.multiply(_feathered(margins, spec.mask_blur), margins)
    blend = ImageChops.lighter(_placed(blend, kept, left, top), feather)
    return Canvas(canvas, mask, blend)


def _placed(mask: Image.Image, kept: Image.Image, left: int, top: int) -> Image.Image:
    """`mask` (the inner image's) on a black canvas of `kept`'s size, at (left, top)."""
    out = Image.new("L", kept.size, 0)
    out.paste(mask, (left, top))
    return out


def _feathered(mask: Image.Image, blur: int) -> Image.Image:
    """`mask` blurred by a Gaussian of radius `blur` px (0: as it is)."""
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def crop_box(blend: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """The box only-masked inpainting generates: the feathered mask's bounding box grown by `padding` px
    each way, within the image (left, top, right, bottom; never empty)."""
    box = blend.getbbox()
    if box is None:  # nothing to paint: the whole image (the API refuses an empty mask)
        return 0, 0, blend.width, blend.height
    left, top, right, bottom = box
    return (
        max(0, left - padding),
        max(0, top - padding),
        min(blend.width, right + padding),
        min(blend.height, bottom + padding),
    )


def process_size(box: tuple[int, int, int, int], resolution: int) -> tuple[int, int]:
    """The size the box is generated at: its aspect ratio at resolution² px (up or down), in multiples of
    8, at least 64 a side."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = resolution / (width * height) ** 0.5
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)


def paste(canvas: Canvas, generated: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`generated` (the box, at any size) blended into the canvas's image by the feathered mask: outside
    the box, and where the feather is 0, the image's pixels."""
    size = (box[2] - box[0], box[3] - box[1])
    if generated.size != size:
        generated = generated.resize(size, Image.Resampling.LANCZOS)
    region = Image.composite(generated.convert("RGB"), canvas.image.crop(box), canvas.blend.crop(box))
    out = canvas.image.copy()
    out.paste(region, box[:2])
    return out

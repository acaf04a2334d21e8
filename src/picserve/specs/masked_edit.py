"""ModifyMaskedPixels (§6.5) as a generation: the image and its mask become the GenerateImagesSDXL
params of an inpainting (Image2Image with its MaskIndex), checked by the generation kind
(specs/generation.py), and the masked edit's own fields are set on the spec it makes: the mask's
inversion and blur, only-masked inpainting, outpainting margins, an extra image starting the masked
region. The task keeps its own Action.

Width and Height are the result's size: left out, the image's size plus the Outpaint margins (an image
larger than 2560 px a side is brought down to fit). The mask must have the image's size, and leave
something to paint.
"""

from __future__ import annotations

from PIL import Image

from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import check_index, generation

__all__ = ["MAX_SIDE", "as_generation", "black_mask", "check_mask", "from_request", "scaled_to_fit"]

#: Width and Height at most (§5)
MAX_SIDE = 2560


def from_request(request: messages.ModifyMaskedPixels, services: Services) -> domain.GenerationSpec:
    params, fill = as_generation(request)
    spec = generation.from_request(params, services)
    masked = request.Masked
    outpaint = request.Outpaint or messages.OutpaintModel()
    return spec.evolve(
        invert_mask=masked.InvertMask if masked.MaskIndex is not None else False,
        mask_blur=masked.MaskBlur,
        inpaint_area="masked" if masked.InpaintArea == "OnlyMasked" else "whole",
        masked_padding=masked.OnlyMaskedPadding,
        masked_resolution=masked.OnlyMaskedResolution,
        outpaint=(outpaint.Left, outpaint.Top, outpaint.Right, outpaint.Bottom),
        fill_image=fill,
    )


def as_generation(request: messages.ModifyMaskedPixels) -> tuple[messages.GenerateImagesSDXL, str | None]:
    """The GenerateImagesSDXL params of the inpainting ModifyMaskedPixels means, and the extra image that
    starts the masked region (base64; None: the image's own content)."""
    images, masked, i2i = request.ImageAndMaskList, request.Masked, request.Image2Image
    named = {"Masked.ImageIndex": masked.ImageIndex, "Masked.MaskIndex": masked.MaskIndex}
    if i2i is not None:
        named["Image2Image.ImageIndex"] = i2i.ImageIndex
        if i2i.MaskIndex is not None:
            raise errors.ParamError(
                f"Image2Image.MaskIndex {i2i.MaskIndex}: ModifyMaskedPixels takes its mask from Masked.MaskIndex"
            )
    for name, index in named.items():
        if index is not None:
            check_index(name, index, images)
    if masked.MaskIndex is not None and masked.MaskIndex == masked.ImageIndex:
        raise errors.ParamError(
            f"Masked.MaskIndex {masked.MaskIndex} is the ImageIndex: the mask must be another ImageAndMaskList entry"
        )
    if i2i is not None and i2i.ImageIndex == masked.MaskIndex:
        raise errors.ParamError(f"Image2Image.ImageIndex {i2i.ImageIndex} is the mask (Masked.MaskIndex)")
    used = {i for i in named.values() if i is not None}
    if unused := [i for i in range(len(images)) if i not in used]:
        raise errors.ParamError(
            f"ImageAndMaskList[{unused[0]}]: no index refers to this entry (Masked.ImageIndex, Masked.MaskIndex, "
            "Image2Image.ImageIndex)"
        )
    outpaint = request.Outpaint or messages.OutpaintModel()
    left, top, right, bottom = outpaint.Left, outpaint.Top, outpaint.Right, outpaint.Bottom
    grows = any((left, top, right, bottom))

    image_name = f"ImageAndMaskList[{masked.ImageIndex}]"
    image = reference_images.decode(images[masked.ImageIndex], image_name)
    if masked.MaskIndex is None:
        if not grows:
            raise errors.ParamError(
                "Masked.MaskIndex: send a mask (white = repaint) in ImageAndMaskList, or Outpaint margins to paint"
            )
        mask_text = black_mask(image.size)
    else:
        mask_name = f"ImageAndMaskList[{masked.MaskIndex}]"
        mask = reference_images.decode(images[masked.MaskIndex], mask_name)
        check_mask(mask, image, f"{mask_name} (Masked.MaskIndex)", masked.InvertMask, allow_empty=grows)
        mask_text = reference_images.strip_data_uri(images[masked.MaskIndex])
    fill: str | None = None
    if i2i is not None and i2i.ImageIndex != masked.ImageIndex:
        reference_images.decode(images[i2i.ImageIndex], f"ImageAndMaskList[{i2i.ImageIndex}]")
        fill = reference_images.strip_data_uri(images[i2i.ImageIndex])

    width, height = request.Width, request.Height
    if width is None or height is None:
        inner_w, inner_h = scaled_to_fit(image.size, MAX_SIDE - left - right, MAX_SIDE - top - bottom)
        width, height = width or inner_w + left + right, height or inner_h + top + bottom
    sides = (("Width", width, left + right, "Left + Right"), ("Height", height, top + bottom, "Top + Bottom"))
    for side, size, margins, pair in sides:
        if size > MAX_SIDE:
            raise errors.ParamError(
                f"Outpaint: the canvas would be {size} px on {side} (the image and Outpaint.{pair}); at most {MAX_SIDE}"
            )
        if size - margins < 8:
            raise errors.ParamError(
                f"Outpaint.{pair} ({margins} px) leave the image {size - margins} px of {side} {size}: at least 8"
            )
    return messages.GenerateImagesSDXL.model_construct(
        **generation.base_fields(request),
        Width=width,
        Height=height,
        BatchSize=request.BatchSize,
        Tiling=False,
        ImageAndMaskList=[reference_images.strip_data_uri(images[masked.ImageIndex]), mask_text],
        Image2Image=messages.Image2ImageModel(
            ImageIndex=0,
            MaskIndex=1,
            # without Image2Image, the masked region is painted anew (strength 1)
            ReferStrength=i2i.ReferStrength if i2i is not None else 1.0,
            ResizeMode=i2i.ResizeMode if i2i is not None else "ResizeAndFill",
        ),
        ControlNetList=None,
        ReturnControlMaps=False,
        HiresFix=None,
        Webhook=request.Webhook,
    ), fill


def check_mask(mask: Image.Image, image: Image.Image, field: str, invert: bool, allow_empty: bool = False) -> None:
    """A mask is the image's size and marks something (white, or black when inverted) to paint."""
    if mask.size != image.size:
        raise errors.ParamError(
            f"{field}: the mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}; send a "
            "mask of the image's size (white = repaint)"
        )
    if allow_empty:
        return
    grey = reference_images.mask_for(mask, mask.width, mask.height, "JustResize")
    low, high = grey.getextrema()
    if (low == 255) if invert else (high == 0):
        colour = "white (InvertMask: black marks the area)" if invert else "black"
        raise errors.ParamError(f"{field}: the mask is all {colour}; it marks nothing to paint")


def black_mask(size: tuple[int, int]) -> str:
    """An all-black mask of `size` (nothing marked) as base64 PNG: an outpainting's drawn mask."""
    return reference_images.png_base64(Image.new("L", size, 0))


def scaled_to_fit(size: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    """`size`, brought down (never up) to fit max_width×max_height with its aspect ratio, at least 64 px a side."""
    scale = min(1.0, max_width / size[0], max_height / size[1])
    return max(64, round(size[0] * scale)), max(64, round(size[1] * scale))

"""Image inputs: decoding PICPIK's base64 fields safely, and A1111's resize modes. PIL only, no torch.

Both sides use it: the API to refuse a bad image before queueing, the engine to prepare it.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from picserve import errors

__all__ = [
    "FORMATS",
    "MAX_PIXELS",
    "RESIZE_MODES",
    "Placement",
    "decode",
    "fit",
    "mask_for",
    "placement",
    "strip_data_uri",
]

FORMATS = ("PNG", "JPEG", "WEBP")
#: largest input accepted: 2560² at 4× covers any legitimate reference image, and stops decompression bombs
MAX_PIXELS = 4 * 2560 * 2560
RESIZE_MODES = ("JustResize", "CropAndResize", "ResizeAndFill")


def strip_data_uri(text: str) -> str:
    """`data:image/png;base64,AAAA` → `AAAA`; bare base64 is returned as it is."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return text.strip()


def decode(text: str, field: str) -> Image.Image:
    """Decode one base64 image (data URI or bare) fully; ParamError names `field` on any problem."""
    if not isinstance(text, str) or not text:
        raise errors.ParamError(f"{field}: expected a base64 image (PNG, JPEG or WebP)")
    try:
        raw = base64.b64decode(strip_data_uri(text), validate=True)
    except (binascii.Error, ValueError):
        raise errors.ParamError(f"{field}: not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in FORMATS:
                raise errors.ParamError(f"{field}: {image.format} images are not accepted (use PNG, JPEG or WebP)")
            if image.width * image.height > MAX_PIXELS:
                raise errors.ParamError(
                    f"{field}: {image.width}x{image.height} is too large (at most {MAX_PIXELS} pixels)"
                )
            image.load()
    except errors.ParamError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise errors.ParamError(f"{field}: image too large (at most {MAX_PIXELS} pixels)") from None
    except (OSError, ValueError, SyntaxError):
        raise errors.ParamError(f"{field}: not a readable PNG, JPEG or WebP image") from None
    return ImageOps.exif_transpose(image)


@dataclass(frozen=True)
class Placement:
    """Where a source image goes in a width×height frame under one resize mode: pure geometry, no pixels.

    The `box` of the source (in source pixels, fractional for a centred crop) is resized to `size` and
    pasted at `offset`; any band of the frame left around it is filled by stretching its edge pixels.
    """

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    offset: tuple[int, int]


def placement(src_width: int, src_height: int, width: int, height: int, mode: str) -> Placement:
    """The A1111 resize mode `mode` as geometry; every part is non-empty and inside the frame.

    JustResize stretches the whole source. CropAndResize covers the frame: the centred part of the source
    with the frame's aspect ratio is cut out, then resized (so no intermediate image is ever larger than
    the frame). ResizeAndFill fits the whole source inside the frame, at least 1 px each way.
    """
    if src_width < 1 or src_height < 1 or width < 1 or height < 1:
        raise ValueError(f"empty size: {src_width}x{src_height} into {width}x{height}")
    full = (0.0, 0.0, float(src_width), float(src_height))
    frame_is_wider = width * src_height > height * src_width  # compare ratios in integers: exact
    if mode == "JustResize" or (width * src_height == height * src_width and mode == "CropAndResize"):
        return Placement(full, (width, height), (0, 0))
    if mode == "CropAndResize":
        if frame_is_wider:  # the full source width; a centred band of its height
            kept = src_width * height / width
            top = (src_height - kept) / 2
            return Placement((0.0, top, float(src_width), top + kept), (width, height), (0, 0))
        kept = src_height * width / height
        left = (src_width - kept) / 2
        return Placement((left, 0.0, left + kept, float(src_height)), (width, height), (0, 0))
    if mode != "ResizeAndFill":
        raise ValueError(f"unknown resize mode {mode!r} (one of {', '.join(RESIZE_MODES)})")
    if frame_is_wider:  # full height; the width by the source's ratio, rounded half up, 1..width
        w, h = min(width, max(1, (2 * height * src_width + src_height) // (2 * src_height))), height
    else:
        w, h = width, min(height, max(1, (2 * width * src_height + src_width) // (2 * src_width)))
    return Placement(full, (w, h), ((width - w) // 2, (height - h) // 2))


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Bring `image` to exactly width×height the way A1111's resize modes do (see `placement`)."""
    image = image.convert("RGB")
    place = placement(image.width, image.height, width, height, mode)
    resized = image.resize(place.size, Image.Resampling.LANCZOS, box=place.box)
    if place.size == (width, height):
        return resized
    out = Image.new("RGB", (width, height))
    out.paste(resized, place.offset)
    _fill_bands(out, place.offset, place.size)
    return out


def _fill_bands(out: Image.Image, offset: tuple[int, int], size: tuple[int, int]) -> None:
    """ResizeAndFill: stretch the pasted image's edge columns, then edge rows, over the empty bands.

    A band may be 0 px wide (a frame one pixel wider than the fitted image): it is skipped.
    """
    (left, top), (w, h), (width, height) = offset, size, out.size
    right, bottom = width - left - w, height - top - h
    if left > 0:
        out.paste(out.crop((left, top, left + 1, top + h)).resize((left, h)), (0, top))
    if right > 0:
        out.paste(out.crop((left + w - 1, top, left + w, top + h)).resize((right, h)), (left + w, top))
    if top > 0:
        out.paste(out.crop((0, top, width, top + 1)).resize((width, top)), (0, 0))
    if bottom > 0:
        out.paste(out.crop((0, top + h - 1, width, top + h)).resize((width, bottom)), (0, top + h))


def mask_for(mask: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A mask prepared like its image (same resize mode), as 8-bit grey: white = repaint."""
    if mask.mode in ("RGBA", "LA"):  # a drawn mask may carry the paint in alpha only
        alpha = mask.getchannel("A")
        mask = alpha if alpha.getextrema() != (255, 255) else mask.convert("L")
    return fit(mask.convert("RGB"), width, height, mode).convert("L")

"""Image inputs: decoding PICPIK's base64 fields safely, and A1111's resize modes. PIL only, no torch.

Both sides use it: the API to refuse a bad image before queueing, the engine to prepare it.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, ImageOps

from picserve import errors

__all__ = ["FORMATS", "MAX_PIXELS", "RESIZE_MODES", "decode", "fit", "mask_for", "strip_data_uri"]

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


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Bring `image` to width×height the way A1111's resize modes do."""
    image = image.convert("RGB")
    if mode == "JustResize" or image.size == (width, height):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == "CropAndResize":  # cover the target, centre-crop the overflow
        w, h = (width, round(width / src_ratio)) if ratio > src_ratio else (round(height * src_ratio), height)
        resized = image.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # ResizeAndFill: fit inside, then stretch the edge rows/columns over the empty bands
    w, h = (round(height * src_ratio), height) if ratio > src_ratio else (width, round(width / src_ratio))
    w, h = max(1, w), max(1, h)
    resized = image.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    out.paste(resized, (left, top))
    if w < width:
        out.paste(resized.crop((0, 0, 1, h)).resize((left, h)), (0, top))
        right = width - left - w
        out.paste(resized.crop((w - 1, 0, w, h)).resize((right, h)), (left + w, top))
    elif h < height:
        out.paste(resized.crop((0, 0, w, 1)).resize((w, top)), (left, 0))
        bottom = height - top - h
        out.paste(resized.crop((0, h - 1, w, h)).resize((w, bottom)), (left, top + h))
    return out


def mask_for(mask: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A mask prepared like its image (same resize mode), as 8-bit grey: white = repaint."""
    if mask.mode in ("RGBA", "LA"):  # a drawn mask may carry the paint in alpha only
        alpha = mask.getchannel("A")
        mask = alpha if alpha.getextrema() != (255, 255) else mask.convert("L")
    return fit(mask.convert("RGB"), width, height, mode).convert("L")

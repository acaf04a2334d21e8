"""Image inputs: decoding PICPIK's base64 fields safely, and A1111's resize modes. PIL only, no torch.

Both sides use it: the API to refuse a bad image before queueing, the engine to prepare it.

`decode` trusts nothing in the data: the format is read from the first bytes (PNG, JPEG or WebP;
Pillow is never asked to guess among its other formats), the size from the header before any pixel is
decoded (a small file may declare 100000×100000: a decompression bomb), animations are refused, and
whatever Pillow raises on damaged data becomes a ParamError naming the entry.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
from collections.abc import Iterator
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
    "png_base64",
    "strip_data_uri",
]

FORMATS = ("PNG", "JPEG", "WEBP")
#: largest input accepted: 2560² at 4× covers any legitimate reference image, and stops decompression bombs
MAX_PIXELS = 4 * 2560 * 2560
RESIZE_MODES = ("JustResize", "CropAndResize", "ResizeAndFill")

#: formats known by their first bytes, only to name them in a refusal
_REFUSED_SIGNATURES = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"8BPS": "PSD",
}
#: modes PNG, JPEG and WebP decode to that are not RGB(A) or 8-bit grey, and what they become
_CONVERTED = {"1": "L", "P": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB"}


def strip_data_uri(text: str) -> str:
    """`data:image/png;base64,AAAA` → `AAAA`; bare base64 is returned as it is."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return text.strip()


def png_base64(image: Image.Image) -> str:
    """`image` as the bare base64 of a PNG file: an image field's value made here (a mask, …)."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def decode(text: str, field: str) -> Image.Image:
    """Decode one base64 image (data URI or bare) fully; ParamError names `field` on any problem.

    The image comes back upright (EXIF orientation applied) in mode RGB, RGBA, L or LA: palettes,
    CMYK, 1-bit and 16-bit grey are converted (16-bit scaled to 8, not clipped).
    """
    if not isinstance(text, str) or not text:
        raise errors.ParamError(f"{field}: expected a base64 image (PNG, JPEG or WebP)")
    if text.startswith("data:"):
        header, comma, _ = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise errors.ParamError(f"{field}: a data URI must carry base64, as in data:image/png;base64,…")
    try:
        raw = base64.b64decode(strip_data_uri(text), validate=True)
    except (binascii.Error, ValueError):
        raise errors.ParamError(f"{field}: not valid base64") from None
    kind = _format_of(raw, field)
    with _unreadable_as(field, kind):
        image = Image.open(io.BytesIO(raw), formats=[kind])
        width, height = image.size
        if width < 1 or height < 1:
            raise errors.ParamError(f"{field}: the image is empty ({width}x{height})")
        if width * height > MAX_PIXELS:
            raise errors.ParamError(f"{field}: {width}x{height} is too large (at most {MAX_PIXELS} pixels)")
        if getattr(image, "is_animated", False) and image.format != "MPO":  # MPO: a JPEG with a preview
            raise errors.ParamError(f"{field}: animated images are not accepted (send a single frame)")
        image.load()
        return _normalized(ImageOps.exif_transpose(image), field)


def _format_of(raw: bytes, field: str) -> str:
    """PNG, JPEG or WEBP from the data's first bytes; ParamError for anything else."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    if not raw:
        raise errors.ParamError(f"{field}: the image is empty (no bytes)")
    named = next((name for magic, name in _REFUSED_SIGNATURES.items() if raw.startswith(magic)), None)
    if named:
        raise errors.ParamError(f"{field}: {named} images are not accepted (use PNG, JPEG or WebP)")
    raise errors.ParamError(f"{field}: not a readable PNG, JPEG or WebP image")


@contextlib.contextmanager
def _unreadable_as(field: str, kind: str) -> Iterator[None]:
    """Pillow's failures on hostile data → ParamError.

    Its decoders raise far more than OSError on damaged input (ValueError, SyntaxError, struct.error,
    IndexError, EOFError, ZeroDivisionError, MemoryError…), and no list of them is promised: every
    exception here is the data's fault, since the data is all this block works on.
    """
    try:
        yield
    except errors.ParamError:
        raise
    except Image.DecompressionBombError:
        raise errors.ParamError(f"{field}: image too large (at most {MAX_PIXELS} pixels)") from None
    except Exception:
        name = "WebP" if kind == "WEBP" else kind
        raise errors.ParamError(f"{field}: not a readable {name} image (damaged or truncated)") from None


def _normalized(image: Image.Image, field: str) -> Image.Image:
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if image.mode.startswith("I"):  # 16-bit grey (I;16…) or 32-bit: keep the top 8 bits
        return image.convert("I").point(lambda v: v / 256).convert("L")
    if image.mode in ("P", "PA") and (image.mode == "PA" or "transparency" in image.info):
        return image.convert("RGBA")
    if image.mode in _CONVERTED:
        return image.convert(_CONVERTED[image.mode])
    raise errors.ParamError(f"{field}: images of mode {image.mode} are not accepted")


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

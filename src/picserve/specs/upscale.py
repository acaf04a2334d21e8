"""The upscale task kind: ResizeImage's wire params → a fully checked UpscaleSpec.

PICPIK's ResizeImage takes `Image`, `Width` and `Height` (64–4096). picserve adds `Scale` (A1111's
"scale by": the output is the input's size × Scale, in place of Width and Height) and `UpscaleModel`
(a ModelCode of models/upscale, or `Lanczos` for no model). Which model a request that names none gets:
the upscaler whose sidecar says `Default: true`, else PICSERVE_DEFAULT_UPSCALER, else the only one
installed, else Lanczos. A target no larger than the image either way is a plain Lanczos downscale:
no model is loaded for it.
"""

from __future__ import annotations

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services

__all__ = ["LANCZOS", "MAX_SIDE", "MIN_SIDE", "from_request", "upscaler"]

#: the UpscaleModel that names no model: a plain Lanczos resample
LANCZOS = "Lanczos"
MIN_SIDE, MAX_SIDE = 64, 4096


def from_request(request: messages.ResizeImage, services: Services) -> domain.UpscaleSpec:
    image = reference_images.decode(request.Image, "Image")
    width, height = _target(request, image.width, image.height)
    grows = width > image.width or height > image.height
    entry = upscaler(request.UpscaleModel, services.catalog, services.settings.default_upscaler)
    model = entry if grows else None  # a downscale needs no model
    return domain.UpscaleSpec(
        width=width,
        height=height,
        source_width=image.width,
        source_height=image.height,
        model_code=model.code if model else None,
        model_scale=(model.scale or 4) if model else 4,
        image=reference_images.strip_data_uri(request.Image),
    )


def _target(request: messages.ResizeImage, source_width: int, source_height: int) -> tuple[int, int]:
    given = (request.Width, request.Height)
    if request.Scale is not None:
        if given != (None, None):
            raise errors.ParamError("Scale: give Width and Height, or Scale, not both")
        width, height = round(source_width * request.Scale), round(source_height * request.Scale)
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            least = max(1.0, MIN_SIDE / min(source_width, source_height))
            most = MAX_SIDE / max(source_width, source_height)
            takes = f"from {least:.2f} to {most:.2f}" if least <= most else "none: give Width and Height"
            raise errors.ParamError(
                f"Scale: {request.Scale:g} makes {source_width}x{source_height} into {width}x{height}; each side "
                f"must be {MIN_SIDE}..{MAX_SIDE} (this image takes Scale {takes})"
            )
        return width, height
    if request.Width is None or request.Height is None:
        missing = "Width" if request.Width is None else "Height"
        raise errors.ParamError(
            f"{missing}: required ({MIN_SIDE}..{MAX_SIDE}); give Width and Height, or picserve's Scale instead"
        )
    return request.Width, request.Height


def upscaler(code: str | None, catalog: catalog_module.Catalog, default: str | None) -> catalog_module.Entry | None:
    """The upscaler `code` names (None: Lanczos), or the default of a request naming none; the refusal
    names the field and what is installed."""
    if code is not None and code.lower() == LANCZOS.lower():
        return None
    field = "UpscaleModel"
    if code is None:
        if (
            default
            and catalog.get("upscale", default) is None
            and not any(e.is_default for e in catalog.entries("upscale").values())
        ):
            raise errors.ModelNotFound(
                f"UpscaleModel: none given, and PICSERVE_DEFAULT_UPSCALER names {default!r}, which is not in "
                f"models/upscale (installed: {_installed(catalog)})"
            )
        entry = catalog.default_tool("upscale", default)
        if entry is None:
            return None
        code, field = entry.code, "UpscaleModel (the default)"
    entry = catalog.get("upscale", code)
    if entry is None:
        raise errors.ModelNotFound(
            f"UpscaleModel {code!r} is not on this server (installed: {_installed(catalog)}; or {LANCZOS!r}: no model)"
        )
    if entry.info.problem:
        raise errors.ModelNotFound(f"{field} {code!r} cannot be used: {entry.info.problem}")
    return entry


def _installed(catalog: catalog_module.Catalog) -> str:
    return ", ".join(sorted(catalog.entries("upscale"))) or "none"

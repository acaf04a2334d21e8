"""The cut-out task kind: RemoveBackground's and RemoveBackgroundsInBatch's wire params → a fully
checked CutoutSpec.

Every image is decoded here (so a bad one never queues), the `Box` is checked against the image, and
the segmentation model is chosen: `BackgroundModel` (picserve extension, a ModelCode of
models/background), else the one whose sidecar says `Default: true`, else
PICSERVE_DEFAULT_BACKGROUND_MODEL, else the only one installed.
"""

from __future__ import annotations

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services

__all__ = ["MAX_BATCH_BASE64_CHARS", "check_thresholds", "from_request", "segmenter"]

#: a batch's images together, in base64 characters (about 36 MB of image files), checked before decoding
MAX_BATCH_BASE64_CHARS = 48 * 1024 * 1024


def from_request(
    request: messages.RemoveBackground | messages.RemoveBackgroundsInBatch, services: Services
) -> domain.CutoutSpec:
    if isinstance(request, messages.RemoveBackground):
        texts, names, box = [request.RawImage], ["RawImage"], request.Box
    else:
        texts, names, box = request.RawImages, [f"RawImages[{i}]" for i in range(len(request.RawImages))], None
        total = sum(len(text) for text in texts)
        if total > MAX_BATCH_BASE64_CHARS:
            raise errors.ParamError(
                f"RawImages: the images must total at most {MAX_BATCH_BASE64_CHARS} base64 characters (got {total})"
            )
    check_thresholds(request)
    sizes = [reference_images.decode(text, name).size for text, name in zip(texts, names, strict=True)]
    entry = segmenter(request.BackgroundModel, services.catalog, services.settings.default_background_model)
    return domain.CutoutSpec(
        sizes=tuple(sizes),
        model_code=entry.code,
        box=_box(box, *sizes[0]) if box is not None else None,
        erode_size=request.ErodeSize,
        foreground_threshold=request.ForegroundThreshold,
        background_threshold=request.BackgroundThreshold,
        hair=request.HairOptimization,
        only_mask=request.OnlyMask,
        images=tuple(reference_images.strip_data_uri(text) for text in texts),
        images_keys=tuple(None for _ in texts),
    )


def check_thresholds(
    request: messages.RemoveBackground | messages.RemoveBackgroundsInBatch | messages.ExtractContents,
) -> None:
    """The matting's trimap thresholds leave a band: BackgroundThreshold below ForegroundThreshold."""
    if request.BackgroundThreshold >= request.ForegroundThreshold:
        raise errors.ParamError(
            f"BackgroundThreshold {request.BackgroundThreshold} must be below ForegroundThreshold "
            f"{request.ForegroundThreshold} (mask values at or below it are background, at or above "
            "ForegroundThreshold foreground, the band between is matted)"
        )


def _box(box: list[int], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    if x1 >= x2 or y1 >= y2:
        raise errors.ParamError(
            f"Box: [{x1},{y1},{x2},{y2}] is empty or inverted; write [x1,y1,x2,y2] with x1 < x2 and y1 < y2"
        )
    if min(x1, y1) < 0 or x2 > width or y2 > height:
        raise errors.ParamError(
            f"Box: [{x1},{y1},{x2},{y2}] is outside the {width}x{height} image "
            f"(0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height})"
        )
    return x1, y1, x2, y2


def segmenter(code: str | None, catalog: catalog_module.Catalog, default: str | None) -> catalog_module.Entry:
    """The background model `code` names, or the default of a request naming none; the refusal names
    the field and what is installed."""
    installed = ", ".join(sorted(catalog.entries("background"))) or "none"
    field = "BackgroundModel"
    if code is None:
        entry = catalog.default_tool("background", default)
        if entry is None:
            if default and not catalog.entries("background").get(default):
                raise errors.ModelNotFound(
                    f"BackgroundModel: none given, and PICSERVE_DEFAULT_BACKGROUND_MODEL names {default!r}, which "
                    f"is not in models/background (installed: {installed})"
                )
            raise errors.ModelNotFound(
                f"BackgroundModel: none given, and this server has no default (installed: {installed}); "
                "install an ONNX segmentation model in models/background (docs/models.md) or name one"
            )
        code, field = entry.code, "BackgroundModel (the default)"
    entry = catalog.get("background", code)
    if entry is None:
        raise errors.ModelNotFound(f"BackgroundModel {code!r} is not on this server (installed: {installed})")
    if entry.info.problem:
        raise errors.ModelNotFound(f"{field} {code!r} cannot be used: {entry.info.problem}")
    return entry

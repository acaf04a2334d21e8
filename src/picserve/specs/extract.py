"""The point-segmentation task kind: ExtractContents' wire params → a checked ExtractSpec.

The image is decoded here; every point must lie on it (0 ≤ X < width, 0 ≤ Y < height), and no point may
be both included and excluded. The matting fields are RemoveBackground's, with its checks. The point
segmenter (`SegmentModel`, a folder of models/segment) is the one named, else the default.
"""

from __future__ import annotations

from picserve import domain_tools, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import cutout, tool_model

__all__ = ["from_request"]


def from_request(request: messages.ExtractContents, services: Services) -> domain_tools.ExtractSpec:
    cutout.check_thresholds(request)
    image = reference_images.decode(request.RawImage, "RawImage")
    include = _points(request.IncludePointList, "IncludePointList", image.size)
    exclude = _points(request.ExcludePointList or [], "ExcludePointList", image.size)
    if both := sorted(set(include) & set(exclude)):
        x, y = both[0]
        raise errors.ParamError(
            f"ExcludePointList: the point {{X: {x}, Y: {y}}} is also in IncludePointList; a point is either on "
            "the object or off it"
        )
    entry = tool_model(services.catalog, "segment", request.SegmentModel, "SegmentModel", "a Segment Anything model")
    return domain_tools.ExtractSpec(
        width=image.width,
        height=image.height,
        model_code=entry.code,
        include=include,
        exclude=exclude,
        erode_size=request.ErodeSize,
        foreground_threshold=request.ForegroundThreshold,
        background_threshold=request.BackgroundThreshold,
        hair=request.HairOptimization,
        only_mask=request.OnlyMask,
        image=reference_images.strip_data_uri(request.RawImage),
    )


def _points(points: list[messages.CoordinateModel], field: str, size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    width, height = size
    for i, point in enumerate(points):
        if not (0 <= point.X < width and 0 <= point.Y < height):
            raise errors.ParamError(
                f"{field}[{i}]: the point {{X: {point.X}, Y: {point.Y}}} is outside the {width}x{height} image "
                f"(0 <= X < {width}, 0 <= Y < {height})"
            )
    return tuple((p.X, p.Y) for p in points)

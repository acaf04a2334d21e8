"""Pydantic models of PICPIK requests and replies, with the wire's exact field names.

Requests forbid unknown fields: a field this server does not know is refused by name, never ignored.
`InferenceParams` is the one open map (the spec says so): unknown keys in it pass, known ones are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, cast

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from picserve import errors

__all__ = [
    "CancelTask",
    "Empty",
    "GenerateImagesSDXL",
    "Image2ImageModel",
    "InferenceParamsModel",
    "ListTasksDetails",
    "Model",
    "TaskDetail",
    "parse",
]

_MAX_SEED = 2147483647


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class InferenceParamsModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    LoraWeight: Annotated[float | None, Field(ge=-1, le=2)] = None
    Steps: Annotated[int | None, Field(ge=6, le=100)] = None
    Sampler: str | None = None
    ClipSkip: Annotated[int | None, Field(ge=1, le=12)] = None
    CFGScale: Annotated[float | None, Field(ge=1, le=30)] = None


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ModelCode: Annotated[str, Field(min_length=1)]
    Name: str | None = None
    IsOfficial: bool | None = None
    TriggerWordList: list[str] | None = None
    InferenceParams: InferenceParamsModel | None = None


class Image2ImageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ImageIndex: Annotated[int, Field(ge=0)]
    ReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    ResizeMode: Annotated[str, Field(pattern="^(JustResize|CropAndResize|ResizeAndFill)$")] = "ResizeAndFill"
    # picserve extension: where the inpainting mask is; without it, the entry after the image (if any)
    MaskIndex: Annotated[int | None, Field(ge=0)] = None


class GenerateImagesSDXL(_Request):
    MainModel: Model
    SubModelList: list[Model] | None = None
    PositivePrompts: list[str] | None = None
    NegativePrompts: list[str] | None = None
    TranslatePrompts: bool = True
    Seed: Annotated[int, Field(ge=-1, le=_MAX_SEED)] = -1
    Width: Annotated[int, Field(ge=64, le=2560)] = 1024
    Height: Annotated[int, Field(ge=64, le=2560)] = 1024
    BatchSize: Annotated[int, Field(ge=1, le=16)] = 1
    Image2Image: Image2ImageModel | None = None
    Tiling: bool = False
    ImageAndMaskList: list[str] | None = None


class ListTasksDetails(_Request):
    TaskUIDList: Annotated[list[str], Field(min_length=1, max_length=100)]


class CancelTask(_Request):
    TaskUIDList: Annotated[list[str], Field(min_length=1, max_length=100)]


class Empty(_Request):
    """Actions with only the common fields."""


class TaskDetail(BaseModel):
    TaskUID: str
    Action: str
    Status: str
    ImgList: list[str] = []
    Seed: int | None = None
    TxtList: list[str] = []
    ConsumeApiPoint: int = 0
    ErrorCode: int = 0
    ErrorMassage: str = ""  # compat: the spec's spelling
    # picserve extensions: fraction of denoising done, every image's seed, notes on the request, and the
    # prompts as the model saw them (translated) next to those the client sent
    Progress: float = 0.0
    SeedList: list[int] = []
    Warnings: list[str] = []
    Prompt: str = ""
    NegativePrompt: str = ""
    OriginalPrompt: str = ""
    OriginalNegativePrompt: str = ""


_M = TypeVar("_M", bound=BaseModel)


def parse(model: type[_M], params: Mapping[str, Any]) -> _M:
    """Validate `params` as `model`; the first problem becomes a ParamError naming field and range."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise errors.ParamError(_describe(model, exc.errors()[0])) from None


def _describe(model: type[BaseModel], error: ErrorDetails) -> str:
    loc = error.get("loc", ())
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    path = path or model.__name__
    kind = error.get("type", "")
    got = error.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown field for {model.__name__}"
    if kind == "missing":
        return f"{path}: missing required field"
    low, high = _bounds(model, loc)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        if low is not None and high is not None:
            return f"{path}: must be between {_number(low)} and {_number(high)} (got {got!r})"
        if low is not None:
            return f"{path}: must be at least {_number(low)} (got {got!r})"
        if high is not None:
            return f"{path}: must be at most {_number(high)} (got {got!r})"
    if kind in ("too_short", "too_long"):
        ctx: dict[str, Any] = error.get("ctx", {})
        return f"{path}: must hold {ctx.get('min_length', 1)} to {ctx.get('max_length', '…')} items"
    if kind == "string_pattern_mismatch":
        allowed = error.get("ctx", {}).get("pattern", "").strip("^$()").replace("|", ", ")
        return f"{path}: must be one of {allowed} (got {got!r})"
    return f"{path}: {error.get('msg', 'invalid value')} (got {got!r})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[Model] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[float | None, float | None]:
    """The ge/le bounds declared on the field at `loc`, to name the allowed range in messages."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None, None
        info = fields[part]
        current = _model_in(info.annotation)
    if info is None:
        return None, None
    low = next((cast(float, m.ge) for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((cast(float, m.le) for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    return low, high

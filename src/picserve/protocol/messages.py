"""Pydantic models of PICPIK requests and replies, with the wire's exact field names.

Requests forbid unknown fields: a field this server does not know is refused by name, never ignored.
`InferenceParams` is the one open map (the spec says so): unknown keys in it pass, known ones are checked.

Wire types are strict (pydantic's strict mode), as the spec's tables type them:

* **Bool**: a JSON `true` or `false`; never `"true"`, `1` or null.
* **Int**: a JSON number with no fractional part. `64.0` is the Int 64 (a JSON number has no separate
  integer type, and the signature encodes both as `64`); `64.5`, `"64"` and `true` are not Ints.
* **Float**: any JSON number (`7` and `7.5`); a bool is never a number.
* **String**: a JSON string; a number is not a string.

Each refusal names the field, the type expected and the value got:
`Tiling: must be a JSON bool (true or false), got the string "true"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, cast

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from picserve import errors
from picserve.protocol.envelope import describe

__all__ = [
    "CONTROL_MODES",
    "HIRES_UPSCALERS",
    "INPAINT_AREAS",
    "LANGUAGES",
    "MAX_CONTROL_UNITS",
    "MAX_POINTS",
    "MAX_TASK_UIDS",
    "ApplyReferenceStyle",
    "BackgroundImage2ImageModel",
    "CancelTask",
    "ControlModelModel",
    "ControlNet",
    "CoordinateModel",
    "DescribeImages",
    "Empty",
    "ExtractContents",
    "FaceRestoreModel",
    "ForegroundModel",
    "GenerateBackgrounds",
    "GenerateImagesSDXL",
    "HiresFixModel",
    "Image2ImageModel",
    "ImportModel",
    "InferenceParamsModel",
    "ListTasksDetails",
    "MaskModel",
    "Model",
    "ModifyMaskedPixels",
    "OutpaintModel",
    "PreProcessorModel",
    "RemoveBackground",
    "RemoveBackgroundsInBatch",
    "RemoveContents",
    "ResizeImage",
    "RestoreFaces",
    "TaskDetail",
    "WebhookModel",
    "parse",
    "shown",
]

_MAX_SEED = 2147483647
#: TaskUIDs one ListTasksDetails or CancelTask may name
MAX_TASK_UIDS = 100
#: a ModelCode is a file name in the models folder: at most 255 characters, as file systems allow
_MAX_MODEL_CODE = 255


def _integral_float(value: Any) -> Any:
    """`64.0` → `64`: a JSON number with no fractional part is an Int (the signature cannot tell them apart)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


#: the spec's Int (see the module doc); Float, Bool and String are plain annotations under strict mode
Int = Annotated[int, BeforeValidator(_integral_float)]
_ResizeMode = Annotated[str, Field(pattern="^(JustResize|CropAndResize|ResizeAndFill)$")]
#: a ControlNet unit's ControlMode, as A1111's three (Balanced; "My prompt is more important"; "ControlNet is
#: more important")
CONTROL_MODES = ("Balanced", "PromptMoreImportant", "ControlNetMoreImportant")
_ControlMode = Annotated[str, Field(pattern=f"^({'|'.join(CONTROL_MODES)})$")]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class InferenceParamsModel(BaseModel):
    """The spec's table 4.2: every known key typed (and ranged where the spec gives a range)."""

    model_config = ConfigDict(strict=True, extra="allow")

    LoraWeight: Annotated[float | None, Field(ge=-1, le=2)] = None
    Steps: Annotated[Int | None, Field(ge=6, le=100)] = None
    Sampler: str | None = None
    ClipSkip: Annotated[Int | None, Field(ge=1, le=12)] = None
    CFGScale: Annotated[float | None, Field(ge=1, le=30)] = None
    # ControlModel keys (A1111's ranges); ControlType is a picserve extension: a ControlNet-Union model's
    # control type for the unit (openpose, depth, softedge, canny, normal, segment, tile, repaint)
    ControlWeight: Annotated[float | None, Field(ge=0, le=2)] = None
    StartingStep: Annotated[float | None, Field(ge=0, le=1)] = None
    EndingStep: Annotated[float | None, Field(ge=0, le=1)] = None
    ControlMode: _ControlMode | None = None
    ResizeMode: _ResizeMode | None = None
    ControlType: Annotated[str | None, StringConstraints(min_length=1, max_length=32)] = None
    # PreProcessor keys (A1111's ranges)
    CannyLowThreshold: Annotated[Int | None, Field(ge=1, le=255)] = None
    CannyHighThreshold: Annotated[Int | None, Field(ge=1, le=255)] = None
    Resolution: Annotated[Int | None, Field(ge=64, le=2048)] = None


class Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    ModelCode: Annotated[str, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)]
    Name: str | None = None
    IsOfficial: bool | None = None
    TriggerWordList: list[str] | None = None
    InferenceParams: InferenceParamsModel | None = None


class Image2ImageModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    ImageIndex: Annotated[Int, Field(ge=0)]
    ReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    ResizeMode: _ResizeMode = "ResizeAndFill"
    # picserve extension: where the inpainting mask is; without it, the entry after the image (if any)
    MaskIndex: Annotated[Int | None, Field(ge=0)] = None


class _ControlPart(BaseModel):
    """§4.5's shape, shared by a unit's PreProcessor and ControlModel: an entry of ListControlNets, passed
    unchanged (§4.1's tip): the reply's picserve extensions are taken, and ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ModelCode: Annotated[str, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)]
    Name: str | None = None
    InferenceParams: InferenceParamsModel | None = None


class PreProcessorModel(_ControlPart):
    """An entry of ListControlNets' PreProcessors (`none`: the image already is the control map)."""

    # ListControlNets' reply fields (picserve extensions), ignored in a request
    ControlType: str | None = None
    ControlModels: list[str] | None = None


class ControlModelModel(_ControlPart):
    """An entry of ListControlNets' ControlModels: a ControlNet, a ControlNet-Union or an IP-Adapter."""

    # ListControlNets' reply fields (picserve extensions), ignored in a request
    Type: str | None = None
    BaseModel: str | None = None
    CompatibleMainModels: list[str] | None = None
    PreProcessors: list[str] | None = None
    ControlTypes: list[str] | None = None
    ImageEncoder: str | None = None
    IsDefault: bool | None = None
    Problem: str | None = None


#: ControlNet units one request may carry (§4.4)
MAX_CONTROL_UNITS = 3


class ControlNet(BaseModel):
    """§4.4: one unit of ControlNetList. Its images are ImageAndMaskList entries; the mask (white: where
    the unit applies) is optional."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ImageIndex: Annotated[Int, Field(ge=0)]
    MaskIndex: Annotated[Int | None, Field(ge=0)] = None
    InvertMask: bool = False
    PreProcessor: PreProcessorModel | None = None
    ControlModel: ControlModelModel


#: a prompt list's parts, and the characters of all of them together (checked when they are joined):
#: far beyond what SDXL reads (77-token chunks), and a bound on the translation work one request makes
MAX_PROMPT_PARTS = 64
MAX_PROMPT_CHARS = 4000
_Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]


#: a webhook URL's characters at most
MAX_WEBHOOK_URL_CHARS = 2048


class WebhookModel(BaseModel):
    """picserve extension: where the task's events are posted (signed; see docs/api.md, Webhooks)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    Url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_WEBHOOK_URL_CHARS)]
    Events: Annotated[
        list[Annotated[str, Field(pattern="^(start|progress|completed)$")]], Field(min_length=1, max_length=3)
    ] = ["completed"]


class _Generation(_Request):
    """§5's base generation fields, shared by the actions that generate (UseMainModelVAE aside)."""

    MainModel: Model
    SubModelList: list[Model] | None = None
    PositivePrompts: Annotated[list[_Prompt] | None, Field(max_length=MAX_PROMPT_PARTS)] = None
    NegativePrompts: Annotated[list[_Prompt] | None, Field(max_length=MAX_PROMPT_PARTS)] = None
    TranslatePrompts: bool = True
    Seed: Annotated[Int, Field(ge=-1, le=_MAX_SEED)] = -1
    Width: Annotated[Int, Field(ge=64, le=2560)] = 1024
    Height: Annotated[Int, Field(ge=64, le=2560)] = 1024
    BatchSize: Annotated[Int, Field(ge=1, le=16)] = 1


#: what a hires fix upscales with besides an upscaler's ModelCode: the latents (A1111's "Latent"), or the
#: image by a Lanczos resample
HIRES_UPSCALERS = ("Latent", "Lanczos")


class HiresFixModel(BaseModel):
    """picserve extension on GenerateImagesSDXL (A1111's hires fix, AI Horde's hires_fix): the image is made
    at a first-pass size the model is good at, upscaled to Width×Height, and denoised again there."""

    model_config = ConfigDict(strict=True, extra="forbid")

    #: "Latent", "Lanczos", or an upscaler's ModelCode (ListModels' UpscaleModels)
    Upscaler: Annotated[str, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = "Latent"
    #: the second pass's steps (A1111's hr_second_pass_steps; 0: the first pass's Steps)
    Steps: Annotated[Int, Field(ge=0, le=100)] = 0
    DenoisingStrength: Annotated[float, Field(ge=0, le=1)] = 0.7
    #: the first pass's size (default: Width×Height's aspect ratio at the model's native area, 1024² for
    #: SDXL; half of Width×Height when that is no larger)
    FirstPassWidth: Annotated[Int | None, Field(ge=64, le=2560)] = None
    FirstPassHeight: Annotated[Int | None, Field(ge=64, le=2560)] = None


class FaceRestoreModel(BaseModel):
    """picserve extension on GenerateImagesSDXL (A1111's "Restore faces", AI Horde's face fixers): each
    image's faces restored after generation, as RestoreFaces restores them."""

    model_config = ConfigDict(strict=True, extra="forbid")

    RestoreStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    FaceModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    FaceDetectModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None


class GenerateImagesSDXL(_Generation):
    Image2Image: Image2ImageModel | None = None
    Tiling: bool = False
    ImageAndMaskList: list[str] | None = None
    # picserve extensions: ControlNet units and IP-Adapter references (PICPIK's GenerateImages field, §4.4),
    # the control maps returned after the images (AI Horde's return_control_map), hires fix, the task's
    # events posted to a URL (default: the key's webhook, if any)
    ControlNetList: Annotated[list[ControlNet] | None, Field(max_length=MAX_CONTROL_UNITS)] = None
    ReturnControlMaps: bool = False
    HiresFix: HiresFixModel | None = None
    FaceRestore: FaceRestoreModel | None = None
    Webhook: WebhookModel | None = None


#: ModifyMaskedPixels' Masked.InpaintArea (A1111's "inpaint area")
INPAINT_AREAS = ("WholePicture", "OnlyMasked")


class MaskModel(BaseModel):
    """§4.6 `Mask` (ModifyMaskedPixels' `Masked`): the image and its mask (white = repaint) as
    ImageAndMaskList entries."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ImageIndex: Annotated[Int, Field(ge=0)] = 0
    #: None: no mask drawn (only the Outpaint margins are painted)
    MaskIndex: Annotated[Int | None, Field(ge=0)] = None
    InvertMask: bool = False
    MaskBlur: Annotated[Int, Field(ge=0, le=64)] = 12
    # picserve extensions: A1111's "inpaint area: only masked" (the mask's box plus OnlyMaskedPadding px,
    # generated at about OnlyMaskedResolution² px and pasted back)
    InpaintArea: Annotated[str, Field(pattern=f"^({'|'.join(INPAINT_AREAS)})$")] = "WholePicture"
    OnlyMaskedPadding: Annotated[Int, Field(ge=0, le=256)] = 32
    OnlyMaskedResolution: Annotated[Int, Field(ge=64, le=2048)] = 1024


class OutpaintModel(BaseModel):
    """picserve extension on ModifyMaskedPixels: the canvas grows by these px per side; the new area is
    pre-filled from the image's edges and painted."""

    model_config = ConfigDict(strict=True, extra="forbid")

    Left: Annotated[Int, Field(ge=0, le=2560)] = 0
    Top: Annotated[Int, Field(ge=0, le=2560)] = 0
    Right: Annotated[Int, Field(ge=0, le=2560)] = 0
    Bottom: Annotated[Int, Field(ge=0, le=2560)] = 0


class ModifyMaskedPixels(_Generation):
    """§6.5: the masked region of an image regenerated; outpainting by growing the canvas."""

    # unlike GenerateImagesSDXL's, no default of 1024: left out, the image's size plus the Outpaint margins
    Width: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    Height: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    UseMainModelVAE: bool = False
    Masked: MaskModel
    #: ReferStrength: how much of the masked region is redrawn (default 1: all of it); an ImageIndex other
    #: than Masked.ImageIndex names an extra image whose content starts the masked region
    Image2Image: Image2ImageModel | None = None
    ImageAndMaskList: Annotated[list[str], Field(min_length=1, max_length=3)]
    # picserve extensions
    Outpaint: OutpaintModel | None = None
    Webhook: WebhookModel | None = None


class ApplyReferenceStyle(_Generation):
    """§6.7: the raw image redrawn (img2img) in the style of the style image (an IP-Adapter), both in
    `ImageList`; the base generation fields (§5) as GenerateImagesSDXL's."""

    # unlike GenerateImagesSDXL's, no default of 1024: left out, the raw image's size (to a multiple of 8)
    Width: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    Height: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    # §5's base field: picserve decodes with the main model's VAE (its sidecar's `Vae`, else its own) either way
    UseMainModelVAE: bool = False
    RawImageIndex: Annotated[Int, Field(ge=0)] = 0
    StyleImageIndex: Annotated[Int, Field(ge=0)] = 1
    StyleReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    ImageList: Annotated[list[str], Field(min_length=1, max_length=2)]
    # picserve extensions: the IP-Adapter (a ModelCode of ListControlNets' ControlModels of Type IPAdapter;
    # default: the one whose sidecar says Default, else the only one), how much of the raw image is redrawn
    # (img2img's denoising strength), the task's events
    StyleModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    RawReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.6
    Webhook: WebhookModel | None = None


#: one base64 image field's characters at most (about 36 MB of image file), checked before decoding
MAX_IMAGE_BASE64_CHARS = 48 * 1024 * 1024
#: images one RemoveBackgroundsInBatch may carry
MAX_BATCH_IMAGES = 16
#: an image field: base64 (bare or a data URI), or (picserve extension) `task:<TaskUID>/<index>`, a
#: finished task's result of the same key
_ImageField = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IMAGE_BASE64_CHARS)]
_Threshold = Annotated[Int, Field(ge=0, le=255)]


class ResizeImage(_Request):
    """§6.16: Width and Height are required by PICPIK; picserve's `Scale` may stand for both."""

    Image: _ImageField
    Width: Annotated[Int | None, Field(ge=64, le=4096)] = None
    Height: Annotated[Int | None, Field(ge=64, le=4096)] = None
    # picserve extensions: the factor when Width and Height are left out (A1111's "Scale by"), and the
    # upscaler (a ModelCode of models/upscale, or "Lanczos": no model)
    Scale: Annotated[float | None, Field(ge=1, le=8)] = None
    UpscaleModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Webhook: WebhookModel | None = None


class _MattingFields(_Request):
    """RemoveBackground's cut-out fields (§6.10), which ExtractContents (§6.12) shares."""

    ErodeSize: Annotated[Int, Field(ge=0, le=40)] = 15
    ForegroundThreshold: _Threshold = 240
    BackgroundThreshold: _Threshold = 15
    HairOptimization: Annotated[str, Field(pattern="^(auto|on|off)$")] = "auto"
    OnlyMask: bool = False


class _BackgroundFields(_MattingFields):
    # picserve extensions: the segmentation model (a ModelCode of models/background), the task's events
    BackgroundModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Webhook: WebhookModel | None = None


class RemoveBackground(_BackgroundFields):
    """§6.10."""

    RawImage: _ImageField
    Box: Annotated[list[Int] | None, Field(min_length=4, max_length=4)] = None


class RemoveBackgroundsInBatch(_BackgroundFields):
    """§6.11: one result per image, in order."""

    RawImages: Annotated[list[_ImageField], Field(min_length=1, max_length=MAX_BATCH_IMAGES)]


class RemoveContents(_Request):
    """§6.13: the object eraser."""

    RawImage: _ImageField
    Mask: _ImageField
    InvertMask: bool = False
    MaskBlur: Annotated[Int, Field(ge=0, le=64)] = 12
    # picserve extensions: the eraser (a ModelCode of models/inpaint; default: the one installed), or an
    # SDXL main model to erase with instead (an inpainting pass with an empty-scene prompt: the way taken
    # when no eraser is installed), its seed, the task's events
    EraseModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    MainModel: Model | None = None
    Seed: Annotated[Int, Field(ge=-1, le=_MAX_SEED)] = -1
    Webhook: WebhookModel | None = None


class ImportModel(_Request):
    """picserve's admin action (keys made with `picserve keys create --admin`): download a model file from
    `Url` and file it in the models folder as `picserve models add` does. `AuthToken` goes to the URL's
    host as `Authorization: Bearer …` (Hugging Face, Civitai); it and a URL carrying credentials are
    stored sealed with the server secret, never echoed in a message, never logged."""

    Url: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    Sha256: Annotated[str | None, StringConstraints(min_length=1, max_length=128)] = None
    ModelCode: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Kind: Annotated[str | None, StringConstraints(min_length=1, max_length=32)] = None
    Force: bool = False
    AuthToken: Annotated[str | None, StringConstraints(min_length=1, max_length=4096)] = None
    Webhook: WebhookModel | None = None


class RestoreFaces(_Request):
    """§6.14: every face found restored and blended back by RestoreStrength."""

    RawImage: _ImageField
    RestoreStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    # picserve extensions: the face restorer (a ModelCode of models/faces) and the face detector (of
    # models/facedetect), each by default the one whose sidecar says Default, else the only one; the
    # task's events
    FaceModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    FaceDetectModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Webhook: WebhookModel | None = None


class CoordinateModel(BaseModel):
    """§4.8 `Coordinate`: a pixel of the image, from its top-left corner."""

    model_config = ConfigDict(strict=True, extra="forbid")

    X: Int
    Y: Int


#: points one ExtractContents point list may hold
MAX_POINTS = 64


class ExtractContents(_MattingFields):
    """§6.12: the object under the include points segmented (Segment Anything), cut out or its mask."""

    RawImage: _ImageField
    IncludePointList: Annotated[list[CoordinateModel], Field(min_length=1, max_length=MAX_POINTS)]
    ExcludePointList: Annotated[list[CoordinateModel] | None, Field(max_length=MAX_POINTS)] = None
    # picserve extensions: the point segmenter (a ModelCode of models/segment; default as RestoreFaces'),
    # the task's events
    SegmentModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Webhook: WebhookModel | None = None


#: §8.2's language codes (DescribeImages' TranslateDescription)
LANGUAGES = ("en", "zh", "ja", "ko", "fr", "es", "it", "de", "tr", "ru", "pt", "vi", "id", "th", "ms")


class DescribeImages(_Request):
    """§6.17: one text per image (TaskDetail.TxtList), in TranslateDescription's language."""

    ImageList: Annotated[list[_ImageField], Field(min_length=1, max_length=MAX_BATCH_IMAGES)]
    TranslateDescription: Annotated[str, Field(pattern=f"^({'|'.join(LANGUAGES)})$")] = "en"
    # picserve extensions: the captioner or tagger (a ModelCode of models/caption; default as
    # RestoreFaces'), the task's events
    CaptionModel: Annotated[str | None, StringConstraints(min_length=1, max_length=_MAX_MODEL_CODE)] = None
    Webhook: WebhookModel | None = None


class ForegroundModel(BaseModel):
    """§4.7 `Foreground` (GenerateBackgrounds' TransparentForeground): an RGBA image of ImageList and where
    it stands on the canvas. Placement and scale are picserve's design (the spec shows none): `Scale`
    multiplies the foreground's own size (default 1, or what fits the canvas when it is larger), `X` and
    `Y` put its top-left corner in canvas pixels (default: centred); it must stay on the canvas."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ImageIndex: Annotated[Int, Field(ge=0)] = 0
    Scale: Annotated[float | None, Field(ge=0.05, le=8)] = None
    X: Int | None = None
    Y: Int | None = None


class BackgroundImage2ImageModel(BaseModel):
    """§4.3 as GenerateBackgrounds' BackgroundImage2Image: a background image of ImageList, fitted to the
    canvas by ResizeMode and redrawn by ReferStrength. Without DeepFusion only a band around the subject is
    redrawn (the rest is the image itself); with it, the whole background."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ImageIndex: Annotated[Int, Field(ge=0)]
    ReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.3
    ResizeMode: _ResizeMode = "ResizeAndFill"
    DeepFusion: bool = False


class GenerateBackgrounds(_Generation):
    """§6.6: a background generated around a transparent foreground, whose pixels are kept."""

    # no default of 1024: left out, the (scaled) foreground's size
    Width: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    Height: Annotated[Int | None, Field(ge=64, le=2560)] = None  # type: ignore[assignment]
    UseMainModelVAE: bool = False
    TransparentForeground: ForegroundModel
    BackgroundImage2Image: BackgroundImage2ImageModel | None = None
    ImageList: Annotated[list[_ImageField], Field(min_length=1, max_length=2)]
    Webhook: WebhookModel | None = None


#: a TaskUID is 20 characters (rs/xid); anything past 64 cannot be one, and is not looked up or echoed
_TaskUID = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ListTasksDetails(_Request):
    TaskUIDList: Annotated[list[_TaskUID], Field(min_length=1, max_length=MAX_TASK_UIDS)]


class CancelTask(_Request):
    TaskUIDList: Annotated[list[_TaskUID], Field(min_length=1, max_length=MAX_TASK_UIDS)]


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
    #: while Running (and previews are on): the image so far, a small JPEG data URI; absent otherwise
    PreviewImage: str | None = None
    #: while Queuing: 1 + the tasks of any key queued before it; absent otherwise
    QueuePosition: int | None = None


_M = TypeVar("_M", bound=BaseModel)


def parse(model: type[_M], params: Mapping[str, Any]) -> _M:
    """Validate `params` as `model`; the first problem becomes a ParamError naming field, type or range."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise errors.ParamError(_describe(model, exc.errors(include_url=False)[0])) from None


#: what each of pydantic's type errors expected, in the spec's words
_EXPECTED = {
    "bool_type": "a JSON bool (true or false)",
    "int_type": "a JSON integer (a number with no fractional part)",
    "float_type": "a JSON number",
    "string_type": "a JSON string",
    "list_type": "a JSON array",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "dict_type": "a JSON object",
}


def _describe(model: type[BaseModel], error: ErrorDetails) -> str:
    loc = error.get("loc", ())
    path = _path(loc) or model.__name__
    kind = error.get("type", "")
    got = error.get("input")
    ctx: dict[str, Any] = error.get("ctx", {})
    if kind == "extra_forbidden":
        known = list(_model_at(model, loc[:-1]).model_fields)
        if not known:
            return f"{path}: unknown field; this action takes only Action, PublicKey, Signature and request_uuid"
        return f"{path}: unknown field for {_path(loc[:-1]) or model.__name__} (known: {', '.join(known)})"
    if kind == "missing":
        return f"{path}: missing required field"
    if kind in _EXPECTED:
        return f"{path}: must be {_EXPECTED[kind]}, got {describe(got)}"
    metadata = _metadata(model, loc)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        low = next((cast(float, m.ge) for m in metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((cast(float, m.le) for m in metadata if isinstance(m, annotated_types.Le)), None)
        if low is not None and high is not None:
            return f"{path}: must be between {_number(low)} and {_number(high)} (got {shown(got)})"
        if low is not None:
            return f"{path}: must be at least {_number(low)} (got {shown(got)})"
        if high is not None:
            return f"{path}: must be at most {_number(high)} (got {shown(got)})"
    if kind in ("too_short", "too_long"):
        low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
        high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
        count = ctx.get("actual_length", len(got) if isinstance(got, list) else "?")
        if low is not None and high is not None:
            return f"{path}: must hold {low} to {high} items (got {count})"
        if high is not None:
            return f"{path}: must hold at most {high} items (got {count})"
        return f"{path}: must hold at least {low if low is not None else 1} items (got {count})"
    if kind == "string_too_short":
        return f"{path}: must not be empty"
    if kind == "string_too_long":
        return f"{path}: must be at most {ctx.get('max_length')} characters (got {len(got)} characters)"
    if kind == "string_pattern_mismatch":
        allowed = str(ctx.get("pattern", "")).strip("^$()").replace("|", ", ")
        return f"{path}: must be one of {allowed} (got {shown(got)})"
    return f"{path}: {error.get('msg', 'invalid value')} (got {shown(got)})"


def _path(loc: tuple[int | str, ...]) -> str:
    """`SubModelList[0].InferenceParams.LoraWeight`: a field path, every name clipped to a readable length."""
    parts = (f"[{p}]" if isinstance(p, int) else f".{_clip(p, 60)}" for p in loc)
    return "".join(parts).lstrip(".")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shown(value: Any) -> str:
    """A value in a range message: `63`, `0.5`, `'Stretch'`, a huge number or string clipped."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 24:
        return describe(value).removeprefix("the number ")
    if isinstance(value, str):
        return repr(_clip(value, 60))
    return repr(value)


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


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model whose field `loc` leads to (for an unknown field: the model that does not know it)."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            break
        current = inner
    return current


def _metadata(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[Any]:
    """The constraints (ge/le, min/max length) declared on the field at `loc`, to name them in messages."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        info = fields[part]
        current = _model_in(info.annotation)
    return list(info.metadata) if info is not None else []

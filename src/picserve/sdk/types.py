"""The shapes SDK calls take and return, as TypedDicts with the wire's names (checked against
`protocol.messages` by a test, so the two never drift apart)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, Required

# typing_extensions' TypedDict: pydantic makes JSON schemas (api/openapi.py) only from that one before Python 3.12
from typing_extensions import TypedDict

__all__ = [
    "ApplyReferenceStyleParams",
    "BackgroundImage2Image",
    "ControlModeName",
    "ControlModel",
    "ControlModelInfo",
    "ControlNet",
    "ControlNetsReply",
    "ControlTypeName",
    "Coordinate",
    "CreditBalance",
    "DescribeImagesParams",
    "ExtractContentsParams",
    "FaceRestore",
    "Foreground",
    "GenerateBackgroundsParams",
    "GenerateImagesSDXLParams",
    "HiresFix",
    "Image2Image",
    "InferenceParams",
    "InpaintAreaName",
    "LanguageName",
    "Masked",
    "ModelRef",
    "ModelsReply",
    "ModifyMaskedPixelsParams",
    "Outpaint",
    "PreProcessor",
    "PreProcessorInfo",
    "PreProcessorParams",
    "RemoveBackgroundParams",
    "RemoveBackgroundsInBatchParams",
    "RemoveContentsParams",
    "ReplyFields",
    "ResizeImageParams",
    "ResizeModeName",
    "RestoreFacesParams",
    "TaskDetail",
    "TaskDetailsReply",
    "TaskStatusName",
    "TaskUIDListReply",
    "TaskUIDReply",
    "Webhook",
]

TaskStatusName = Literal["Queuing", "Running", "Finished", "Error", "Canceled"]
#: how a reference or control image is brought to the generation's size (A1111's resize modes)
ResizeModeName = Literal["JustResize", "CropAndResize", "ResizeAndFill"]
#: a ControlNet unit's ControlMode, A1111's three: Balanced; "My prompt is more important"; "ControlNet is
#: more important" (`protocol.messages.CONTROL_MODES`)
ControlModeName = Literal["Balanced", "PromptMoreImportant", "ControlNetMoreImportant"]
#: a ControlNet-Union's control types (picserve extension; `specs.controlnet.UNION_TYPES`)
ControlTypeName = Literal["openpose", "depth", "softedge", "canny", "normal", "segment", "tile", "repaint"]
#: ModifyMaskedPixels' Masked.InpaintArea, A1111's "inpaint area" (`protocol.messages.INPAINT_AREAS`)
InpaintAreaName = Literal["WholePicture", "OnlyMasked"]


class PreProcessorParams(TypedDict, total=False):
    """A PreProcessor's InferenceParams: PICPIK documents the first three, the others are A1111's sliders
    by PascalCase names (each preprocessor reads its own; ListControlNets shows them with their defaults)."""

    CannyLowThreshold: int  # 1..255 (canny)
    CannyHighThreshold: int  # 1..255 (canny), not below CannyLowThreshold
    Resolution: int  # 64..2048: the side the control map is made at
    XDoGThreshold: int  # 1..64 (scribble_xdog): lower, more lines
    GammaCorrection: float  # 0.1..2 (recolor_*)
    DownSamplingRate: float  # 1..8 (tile_resample)
    RemoveNearPercent: int  # 0..100 (depth_leres)
    RemoveBackgroundPercent: int  # 0..100 (depth_leres)
    MLSDValueThreshold: float  # 0.01..2 (mlsd)
    MLSDDistanceThreshold: float  # 0.01..20 (mlsd)
    Seed: int  # shuffle's random field (absent: a new one each time)


class InferenceParams(PreProcessorParams, total=False):
    """PICPIK's one InferenceParams type, for every parent: a main model, a LoRA, a ControlModel and a
    PreProcessor each read their own keys (an open map on the wire: unknown keys pass)."""

    # a main model's
    Steps: int
    Sampler: str
    ClipSkip: int
    CFGScale: float
    # a LoRA's (a hypernetwork's multiplier)
    LoraWeight: float
    # a ControlModel's (A1111's ranges)
    ControlWeight: float  # 0..2
    StartingStep: float  # 0..1: the fraction of the steps where the unit starts acting
    EndingStep: float  # 0..1, not before StartingStep
    ControlMode: ControlModeName
    ResizeMode: ResizeModeName
    ControlType: ControlTypeName  # picserve extension: a ControlNet-Union's type for the unit


class ModelRef(TypedDict):
    ModelCode: str
    InferenceParams: NotRequired[InferenceParams]


class Image2Image(TypedDict):
    ImageIndex: int
    ReferStrength: NotRequired[float]
    ResizeMode: NotRequired[ResizeModeName]
    MaskIndex: NotRequired[int]


class PreProcessor(TypedDict):
    """A ControlNet unit's preprocessor: a ModelCode of ListControlNets' PreProcessors (`none`: the image
    already is the control map) and its InferenceParams (left out: the preprocessor's defaults)."""

    ModelCode: str
    Name: NotRequired[str]
    InferenceParams: NotRequired[InferenceParams]
    # ListControlNets' reply fields: an entry is passed unchanged, and these are ignored
    ControlType: NotRequired[str | None]
    ControlModels: NotRequired[list[str]]


class ControlModel(TypedDict):
    """A ControlNet unit's model: a ModelCode of ListControlNets' ControlModels (a ControlNet, a
    ControlNet-Union, or an IP-Adapter: then the unit's image is a reference image) and its
    InferenceParams (each key left out: the model's sidecar default, else PICPIK's)."""

    ModelCode: str
    Name: NotRequired[str]
    InferenceParams: NotRequired[InferenceParams]
    # ListControlNets' reply fields: an entry is passed unchanged, and these are ignored
    Type: NotRequired[str]
    BaseModel: NotRequired[str]
    CompatibleMainModels: NotRequired[list[str]]
    PreProcessors: NotRequired[list[str]]
    ControlTypes: NotRequired[list[str]]
    ImageEncoder: NotRequired[str | None]
    IsDefault: NotRequired[bool]
    Problem: NotRequired[str]


class ControlNet(TypedDict):
    """One unit of ControlNetList (`sdk.control_unit` builds one). Its image and optional mask (white:
    where the unit acts) are ImageAndMaskList entries; without a PreProcessor the image is the control map."""

    ImageIndex: int
    MaskIndex: NotRequired[int]
    InvertMask: NotRequired[bool]
    PreProcessor: NotRequired[PreProcessor]
    ControlModel: ControlModel


class Webhook(TypedDict, total=False):
    """Where picserve posts the task's events (picserve extension; see docs/api.md, Webhooks)."""

    Url: str
    Events: list[Literal["start", "progress", "completed"]]


class HiresFix(TypedDict, total=False):
    """GenerateImagesSDXL's hires fix (picserve extension; `sdk.hires_fix` builds one): made at a first-pass
    size, upscaled to Width×Height, denoised again there (A1111's hires fix). Text-to-image only."""

    Upscaler: str  # "Latent" (default), "Lanczos", or a ModelCode of ListModels' UpscaleModels
    Steps: int  # 0..100, the second pass's (0: the first pass's Steps)
    DenoisingStrength: float  # 0..1 (0.7)
    FirstPassWidth: int  # 64..2560 (default: Width×Height's aspect ratio at 1024² px, or half of it)
    FirstPassHeight: int


class Masked(TypedDict, total=False):
    """ModifyMaskedPixels' `Masked`: the image and its mask (white = repaint) by ImageAndMaskList index."""

    ImageIndex: int  # default 0
    MaskIndex: int  # may be left out when Outpaint margins are given: only they are painted
    InvertMask: bool
    MaskBlur: int  # 0..64 (12)
    # picserve extensions: A1111's "inpaint area: only masked"
    InpaintArea: InpaintAreaName
    OnlyMaskedPadding: int  # 0..256 (32): px around the mask's box
    OnlyMaskedResolution: int  # 64..2048 (1024): the crop is generated at about this² px


class Outpaint(TypedDict, total=False):
    """ModifyMaskedPixels' outpainting margins (picserve extension): px added per side, 0..2560."""

    Left: int
    Top: int
    Right: int
    Bottom: int


class _GenerationParams(TypedDict, total=False):
    """The base generation fields (PICPIK §5) of the actions that generate."""

    MainModel: Required[ModelRef]
    SubModelList: list[ModelRef]
    PositivePrompts: list[str]
    NegativePrompts: list[str]
    TranslatePrompts: bool
    Seed: int
    Width: int
    Height: int
    BatchSize: int


class GenerateImagesSDXLParams(_GenerationParams, total=False):
    Image2Image: Image2Image
    Tiling: bool
    ImageAndMaskList: list[str]
    # picserve extensions: ControlNet units (PICPIK's GenerateImages field, at most 3), and their control
    # maps returned in ImgList after the images
    ControlNetList: list[ControlNet]
    ReturnControlMaps: bool
    HiresFix: HiresFix  # picserve extension: A1111's hires fix (text-to-image only)
    FaceRestore: FaceRestore  # picserve extension: every image's faces restored once it is made
    Webhook: Webhook  # picserve extension


class ModifyMaskedPixelsParams(_GenerationParams, total=False):
    """ModifyMaskedPixels: the masked region of `ImageAndMaskList[Masked.ImageIndex]` regenerated (inpainting),
    and (picserve extension) the canvas grown by `Outpaint` margins (outpainting). Width and Height left out:
    the image's size plus the margins. `Image2Image.ReferStrength`: how much of the masked region is redrawn
    (default 1: all of it); an `Image2Image.ImageIndex` other than Masked.ImageIndex: an extra image starting
    the masked region. Images as ResizeImageParams' `Image` (base64 or `task:<TaskUID>/<index>`)."""

    Masked: Required[Masked]
    ImageAndMaskList: Required[list[str]]  # 1 to 3 entries
    Image2Image: Image2Image
    UseMainModelVAE: bool
    Outpaint: Outpaint  # picserve extension
    Webhook: Webhook  # picserve extension


class RemoveContentsParams(TypedDict, total=False):
    """RemoveContents: what `Mask` (white; the image's size) covers is erased and filled plausibly, by an
    eraser of models/inpaint (LaMa) or (picserve extension `MainModel`, and when no eraser is installed) an
    SDXL inpainting pass. Images as ResizeImageParams' `Image`."""

    RawImage: Required[str]
    Mask: Required[str]
    InvertMask: bool
    MaskBlur: int  # 0..64 (12)
    EraseModel: str  # picserve extension: a ModelCode of ListModels' InpaintModels
    MainModel: ModelRef  # picserve extension: erase with an SDXL inpainting pass of this model instead
    Seed: int  # picserve extension: the SDXL pass's seed (-1: random)
    Webhook: Webhook  # picserve extension


class ImportModelParams(TypedDict, total=False):
    """ImportModel (picserve extension; admin keys only): the server downloads `Url` and files it in its
    models folder as `picserve models add` does. The task's TxtList says what was filed."""

    Url: Required[str]  # http(s)
    Sha256: str  # 64 hex digits: refused unless the file's SHA-256 is this
    ModelCode: str  # the name to file it under (default: the file's name)
    Kind: str  # main, lora, embedding, … (default: told by its tensors)
    Force: bool  # replace a model of the same name
    AuthToken: str  # sent to the URL's host as `Authorization: Bearer …`; stored sealed, never shown
    Webhook: Webhook


class ApplyReferenceStyleParams(_GenerationParams, total=False):
    """ApplyReferenceStyle: `ImageList[RawImageIndex]` redrawn (img2img, RawReferStrength) in the style of
    `ImageList[StyleImageIndex]` (an IP-Adapter, StyleReferStrength); Width and Height left out: the raw
    image's size. Images as ResizeImageParams' `Image` (base64 or `task:<TaskUID>/<index>`)."""

    ImageList: Required[list[str]]
    RawImageIndex: int
    StyleImageIndex: int
    StyleReferStrength: float
    UseMainModelVAE: bool
    StyleModel: str  # picserve extension: an IP-Adapter of ListControlNets' ControlModels (Type IPAdapter)
    RawReferStrength: float  # picserve extension: how much of the raw image is redrawn (0.6)
    Webhook: Webhook  # picserve extension


class ResizeImageParams(TypedDict, total=False):
    """ResizeImage: `Image` to exactly Width×Height, or (picserve extension) to its size × `Scale`.

    `Image` is base64 (bare or a data URI; `sdk.image_data` makes one from a file) or (picserve
    extension) a finished task's result of the same key, `task:<TaskUID>/<index>` (`sdk.task_image`).
    """

    Image: Required[str]
    Width: int
    Height: int
    Scale: float  # picserve extension: instead of Width and Height
    UpscaleModel: str  # picserve extension: a ModelCode of ListModels' UpscaleModels, or "Lanczos"
    Webhook: Webhook  # picserve extension


class _MattingParams(TypedDict, total=False):
    """The cut-out fields RemoveBackground, RemoveBackgroundsInBatch and ExtractContents share."""

    ErodeSize: int
    ForegroundThreshold: int
    BackgroundThreshold: int
    HairOptimization: Literal["auto", "on", "off"]
    OnlyMask: bool


class _BackgroundParams(_MattingParams, total=False):
    """The fields RemoveBackground and RemoveBackgroundsInBatch share."""

    BackgroundModel: str  # picserve extension: a ModelCode of ListModels' BackgroundModels
    Webhook: Webhook  # picserve extension


class RemoveBackgroundParams(_BackgroundParams, total=False):
    """RemoveBackground: one image's subject cut out (an RGBA PNG), or its mask (`OnlyMask`).
    `RawImage` as ResizeImageParams' `Image`; `Box`: `[x1, y1, x2, y2]`, where the subject is."""

    RawImage: Required[str]
    Box: list[int]


class RemoveBackgroundsInBatchParams(_BackgroundParams, total=False):
    """RemoveBackgroundsInBatch: 1 to 16 images, one result each, in order (one task)."""

    RawImages: Required[list[str]]


class FaceRestore(TypedDict, total=False):
    """GenerateImagesSDXL's FaceRestore (picserve extension): RestoreFaces' strength and models."""

    RestoreStrength: float
    FaceModel: str
    FaceDetectModel: str


class RestoreFacesParams(TypedDict, total=False):
    """RestoreFaces: every face of `RawImage` restored, blended back by `RestoreStrength` (0..1, 0.5)."""

    RawImage: Required[str]
    RestoreStrength: float
    FaceModel: str  # picserve extension: a ModelCode of ListModels' FaceModels
    FaceDetectModel: str  # picserve extension: a ModelCode of ListModels' FaceDetectModels
    Webhook: Webhook  # picserve extension


class Coordinate(TypedDict):
    """A pixel of the image, from its top-left corner."""

    X: int
    Y: int


class ExtractContentsParams(_MattingParams, total=False):
    """ExtractContents: the object under `IncludePointList` (and not under `ExcludePointList`) cut out of
    `RawImage` (an RGBA PNG), or its mask (`OnlyMask`), with RemoveBackground's matting fields."""

    RawImage: Required[str]
    IncludePointList: Required[list[Coordinate]]
    ExcludePointList: list[Coordinate]
    SegmentModel: str  # picserve extension: a ModelCode of ListModels' SegmentModels
    Webhook: Webhook  # picserve extension


#: DescribeImages' TranslateDescription (§8.2's codes)
LanguageName = Literal["en", "zh", "ja", "ko", "fr", "es", "it", "de", "tr", "ru", "pt", "vi", "id", "th", "ms"]


class DescribeImagesParams(TypedDict, total=False):
    """DescribeImages: one text per image of `ImageList` (1 to 16), in order, in the task's TxtList."""

    ImageList: Required[list[str]]
    TranslateDescription: LanguageName
    CaptionModel: str  # picserve extension: a ModelCode of ListModels' CaptionModels
    Webhook: Webhook  # picserve extension


class Foreground(TypedDict, total=False):
    """GenerateBackgrounds' TransparentForeground: an RGBA entry of ImageList; `Scale` its size factor
    (default 1, or what fits the canvas), `X`/`Y` its top-left corner on the canvas (default: centred)."""

    ImageIndex: int
    Scale: float
    X: int
    Y: int


class BackgroundImage2Image(TypedDict, total=False):
    """GenerateBackgrounds' background image: redrawn by ReferStrength (0.3); DeepFusion redraws all of it,
    else only a band around the subject."""

    ImageIndex: Required[int]
    ReferStrength: float
    ResizeMode: ResizeModeName
    DeepFusion: bool


class GenerateBackgroundsParams(_GenerationParams, total=False):
    """GenerateBackgrounds: a background painted around `TransparentForeground`, whose opaque pixels are
    kept; Width and Height left out: the (scaled) foreground's size."""

    ImageList: Required[list[str]]
    TransparentForeground: Required[Foreground]
    BackgroundImage2Image: BackgroundImage2Image
    UseMainModelVAE: bool


class TaskDetail(TypedDict):
    TaskUID: str
    Action: str
    Status: TaskStatusName
    ImgList: list[str]
    Seed: int | None
    TxtList: list[str]
    ConsumeApiPoint: int
    ErrorCode: int
    ErrorMassage: str  # compat: the spec's spelling
    Progress: float
    SeedList: list[int]
    Warnings: list[str]
    Prompt: str
    NegativePrompt: str
    OriginalPrompt: str
    OriginalNegativePrompt: str
    PreviewImage: NotRequired[str]  # while Running, when previews are on: the image so far (a JPEG data URI)
    QueuePosition: NotRequired[int]  # while Queuing: 1 + the tasks of any key queued before it


class CreditBalance(TypedDict):
    TotalCredits: int
    UsedCredits: int
    ExpireTimestamp: NotRequired[int]


class ModelsReply(TypedDict):
    MainModels: dict[str, dict[str, Any]]
    LoraModels: dict[str, dict[str, Any]]
    EmbeddingModels: dict[str, dict[str, Any]]
    HypernetworkModels: dict[str, dict[str, Any]]
    VaeModels: dict[str, dict[str, Any]]  # picserve extension: the installed VAEs
    # picserve extensions: ResizeImage's upscalers (Architecture, Scale, IsDefault) and RemoveBackground's
    # segmentation models (Session, IsDefault), by ModelCode; `Problem` on an entry whose file is broken
    UpscaleModels: NotRequired[dict[str, dict[str, Any]]]
    BackgroundModels: NotRequired[dict[str, dict[str, Any]]]
    # picserve extension: RemoveContents' erasers (models/inpaint), by ModelCode
    InpaintModels: NotRequired[dict[str, dict[str, Any]]]
    # picserve extensions: RestoreFaces' restorers and detectors, ExtractContents' point segmenters,
    # DescribeImages' captioners and taggers, by ModelCode
    FaceModels: NotRequired[dict[str, dict[str, Any]]]
    FaceDetectModels: NotRequired[dict[str, dict[str, Any]]]
    SegmentModels: NotRequired[dict[str, dict[str, Any]]]
    CaptionModels: NotRequired[dict[str, dict[str, Any]]]


class PreProcessorInfo(TypedDict):
    """An entry of ListControlNets' PreProcessors: the preprocessors this server can run now."""

    Name: str
    ModelCode: str
    InferenceParams: InferenceParams  # its defaults
    # picserve extensions: the ControlNet-Union control type its map feeds (None: no one type), and the
    # installed control models it pairs with
    ControlType: NotRequired[str | None]
    ControlModels: NotRequired[list[str]]


class ControlModelInfo(TypedDict):
    """An entry of ListControlNets' ControlModels: an installed control model (models/controlnet)."""

    Name: str
    ModelCode: str
    InferenceParams: InferenceParams  # its defaults: its sidecar's, else PICPIK's
    # picserve extensions: `ControlNet` or `ControlNetUnion`; the base model it was made for (SDXL, SD1, …);
    # the main models it fits; the preprocessors it pairs with (its own first, `none` last); a Union's
    # control types; why a file cannot be used
    Type: NotRequired[str]
    BaseModel: NotRequired[str]
    CompatibleMainModels: NotRequired[list[str]]
    PreProcessors: NotRequired[list[str]]
    ControlTypes: NotRequired[list[str]]
    Problem: NotRequired[str]


class ControlNetsReply(TypedDict):
    """ListControlNets' reply: both maps keyed by ModelCode."""

    PreProcessors: dict[str, PreProcessorInfo]
    ControlModels: dict[str, ControlModelInfo]


# The replies' own fields, for the actions whose SDK call unwraps them (and for /openapi.json).


class ReplyFields(TypedDict):
    """What every reply carries; an action's own fields sit beside them (RetCode 0: success)."""

    Action: str
    RetCode: int
    Message: str
    request_uuid: NotRequired[str]


class TaskUIDReply(TypedDict):
    """The reply of the actions that make a task: GenerateImagesSDXL, ApplyReferenceStyle, ModifyMaskedPixels,
    RemoveContents, ResizeImage, RemoveBackground and RemoveBackgroundsInBatch."""

    TaskUID: str


class TaskDetailsReply(TypedDict):
    """ListTasksDetails' reply."""

    TaskDetailList: list[TaskDetail]


class TaskUIDListReply(TypedDict):
    """ListRunningTasks' reply."""

    TaskUIDList: list[str]

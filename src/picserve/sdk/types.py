"""The shapes SDK calls take and return, as TypedDicts with the wire's names (checked against
`protocol.messages` by a test, so the two never drift apart)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, Required

# typing_extensions' TypedDict: pydantic makes JSON schemas (api/openapi.py) only from that one before Python 3.12
from typing_extensions import TypedDict

__all__ = [
    "CreditBalance",
    "GenerateImagesSDXLParams",
    "Image2Image",
    "InferenceParams",
    "ModelRef",
    "ModelsReply",
    "RemoveBackgroundParams",
    "RemoveBackgroundsInBatchParams",
    "ReplyFields",
    "ResizeImageParams",
    "TaskDetail",
    "TaskDetailsReply",
    "TaskStatusName",
    "TaskUIDListReply",
    "TaskUIDReply",
    "Webhook",
]

TaskStatusName = Literal["Queuing", "Running", "Finished", "Error", "Canceled"]


class InferenceParams(TypedDict, total=False):
    Steps: int
    Sampler: str
    ClipSkip: int
    CFGScale: float
    LoraWeight: float


class ModelRef(TypedDict):
    ModelCode: str
    InferenceParams: NotRequired[InferenceParams]


class Image2Image(TypedDict):
    ImageIndex: int
    ReferStrength: NotRequired[float]
    ResizeMode: NotRequired[Literal["JustResize", "CropAndResize", "ResizeAndFill"]]
    MaskIndex: NotRequired[int]


class Webhook(TypedDict, total=False):
    """Where picserve posts the task's events (picserve extension; see docs/api.md, Webhooks)."""

    Url: str
    Events: list[Literal["start", "progress", "completed"]]


class GenerateImagesSDXLParams(TypedDict, total=False):
    MainModel: ModelRef
    SubModelList: list[ModelRef]
    PositivePrompts: list[str]
    NegativePrompts: list[str]
    TranslatePrompts: bool
    Seed: int
    Width: int
    Height: int
    BatchSize: int
    Image2Image: Image2Image
    Tiling: bool
    ImageAndMaskList: list[str]
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


class _BackgroundParams(TypedDict, total=False):
    """The fields RemoveBackground and RemoveBackgroundsInBatch share."""

    ErodeSize: int
    ForegroundThreshold: int
    BackgroundThreshold: int
    HairOptimization: Literal["auto", "on", "off"]
    OnlyMask: bool
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


# The replies' own fields, for the actions whose SDK call unwraps them (and for /openapi.json).


class ReplyFields(TypedDict):
    """What every reply carries; an action's own fields sit beside them (RetCode 0: success)."""

    Action: str
    RetCode: int
    Message: str
    request_uuid: NotRequired[str]


class TaskUIDReply(TypedDict):
    """The reply of the actions that make a task: GenerateImagesSDXL, ResizeImage, RemoveBackground and
    RemoveBackgroundsInBatch."""

    TaskUID: str


class TaskDetailsReply(TypedDict):
    """ListTasksDetails' reply."""

    TaskDetailList: list[TaskDetail]


class TaskUIDListReply(TypedDict):
    """ListRunningTasks' reply."""

    TaskUIDList: list[str]

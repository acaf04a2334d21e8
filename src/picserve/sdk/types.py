"""The shapes SDK calls take and return, as TypedDicts with the wire's names (checked against
`protocol.messages` by a test, so the two never drift apart)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired

# typing_extensions' TypedDict: pydantic makes JSON schemas (api/openapi.py) only from that one before Python 3.12
from typing_extensions import TypedDict

__all__ = [
    "CreditBalance",
    "GenerateImagesSDXLParams",
    "Image2Image",
    "InferenceParams",
    "ModelRef",
    "ModelsReply",
    "ReplyFields",
    "TaskDetail",
    "TaskDetailsReply",
    "TaskStatusName",
    "TaskUIDListReply",
    "TaskUIDReply",
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


# The replies' own fields, for the actions whose SDK call unwraps them (and for /openapi.json).


class ReplyFields(TypedDict):
    """What every reply carries; an action's own fields sit beside them (RetCode 0: success)."""

    Action: str
    RetCode: int
    Message: str
    request_uuid: NotRequired[str]


class TaskUIDReply(TypedDict):
    """GenerateImagesSDXL's reply."""

    TaskUID: str


class TaskDetailsReply(TypedDict):
    """ListTasksDetails' reply."""

    TaskDetailList: list[TaskDetail]


class TaskUIDListReply(TypedDict):
    """ListRunningTasks' reply."""

    TaskUIDList: list[str]

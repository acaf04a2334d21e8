"""The shapes SDK calls take and return, as TypedDicts with the wire's names (checked against
`protocol.messages` by a test, so the two never drift apart)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "CreditBalance",
    "GenerateImagesSDXLParams",
    "Image2Image",
    "InferenceParams",
    "ModelRef",
    "ModelsReply",
    "TaskDetail",
    "TaskStatusName",
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


class CreditBalance(TypedDict):
    TotalCredits: int
    UsedCredits: int
    ExpireTimestamp: NotRequired[int]


class ModelsReply(TypedDict):
    MainModels: dict[str, dict[str, Any]]
    LoraModels: dict[str, dict[str, Any]]
    EmbeddingModels: dict[str, dict[str, Any]]
    HypernetworkModels: dict[str, dict[str, Any]]

"""Values that cross picserve's layers: frozen, snake_case, no I/O, no wire names."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "SAMPLER_NAMES",
    "WEBHOOK_EVENTS",
    "Account",
    "Capacity",
    "GenerationSpec",
    "RequestId",
    "Run",
    "SubModel",
    "TaskRecord",
    "TaskStatus",
    "Webhook",
    "WebhookDelivery",
    "canonical_sampler",
]


class TaskStatus(enum.StrEnum):
    QUEUING = "Queuing"
    RUNNING = "Running"
    FINISHED = "Finished"
    ERROR = "Error"
    CANCELED = "Canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.FINISHED, TaskStatus.ERROR, TaskStatus.CANCELED)


@dataclass(frozen=True)
class SubModel:
    """A LoRA, embedding or hypernetwork applied on top of the main model."""

    kind: str  #: "lora" | "embedding" | "hypernetwork"
    code: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationSpec:
    """A fully validated generation request: everything the engine needs, nothing else."""

    model_code: str
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    batch_size: int = 1
    steps: int = 10
    cfg_scale: float = 7.5
    sampler: str = "Euler"
    #: A1111 semantics: 1 = SDXL's default (penultimate layer), n = n-1 more layers skipped
    clip_skip: int = 1
    #: already resolved: never -1 here; image i of the batch uses seed + i
    seed: int = 0
    tiling: bool = False
    sub_models: tuple[SubModel, ...] = ()
    #: img2img / inpainting: the reference image and its mask (white = repaint), base64 as received
    init_image: str | None = None
    mask_image: str | None = None
    #: where the image and mask wait in the store while the task is queued (tasks/references.py):
    #: a queued task's row holds these keys instead of the base64
    init_image_key: str | None = None
    mask_image_key: str | None = None
    #: denoising strength for img2img and inpainting (PICPIK's ReferStrength)
    strength: float = 0.5
    #: how the reference image is brought to width×height: JustResize, CropAndResize or ResizeAndFill
    resize_mode: str = "ResizeAndFill"
    #: the prompts as the client sent them, before any translation
    original_prompt: str | None = None
    original_negative_prompt: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint: the pipeline this request needs."""
        if self.mask_image or self.mask_image_key:
            return "inpaint"
        return "img2img" if self.init_image or self.init_image_key else "txt2img"

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch_size)]

    def evolve(self, **changes: Any) -> GenerationSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> GenerationSpec:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data["sub_models"] = tuple(SubModel(**s) for s in data.get("sub_models", ()))
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(**data)


@dataclass(frozen=True)
class Account:
    """An API key pair and its credit balance."""

    public_key: str
    #: never printed: left out of repr, so a logged Account does not leak it
    private_key: str = dataclasses.field(repr=False)
    name: str = ""
    total_credits: int = 0
    used_credits: int = 0
    expire_at: datetime | None = None
    revoked: bool = False
    #: this key's own limits; None = the server's (PICSERVE_MAX_OPEN_TASKS, PICSERVE_MAX_REQUESTS_PER_MINUTE),
    #: 0 = none
    max_open_tasks: int | None = None
    max_requests_per_minute: int | None = None
    #: scheduling among keys (tasks/routing.py): a higher priority is served first, strictly; among
    #: keys of equal priority, the one with the fewest running tasks per unit of weight
    priority: int = 0
    weight: float = 1.0
    #: the webhook of this key's tasks that name none (events: completed only); None: no default
    webhook_url: str | None = None


@dataclass(frozen=True)
class RequestId:
    """What makes a submit idempotent: the client's request_uuid and a fingerprint of the signed
    parameters. A resend with both equal within `window` seconds gets the first TaskUID back."""

    request_uuid: str
    fingerprint: str
    window: float = 24 * 3600


@dataclass(frozen=True)
class Run:
    """One worker's attempt at one task. Every write a worker makes names its run, so the writes of a
    run that was superseded (its worker froze past the heartbeat timeout and the task went to another)
    are refused instead of overwriting the newer run's."""

    task_uid: str
    worker: str
    #: the task's attempt number when this run took it (1 for the first run)
    attempt: int


@dataclass(frozen=True)
class TaskRecord:
    """One task as stored: its request, its state and its results."""

    task_uid: str
    public_key: str
    action: str
    status: TaskStatus
    spec: GenerationSpec
    cost: int = 0
    progress: float = 0.0
    #: storage keys of the result images, in batch order
    result_keys: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    error_code: int = 0
    error_message: str = ""
    worker: str | None = None
    #: how many times a worker has taken the task (a run requeued after its worker died takes a new number)
    attempt: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: while Running: the latest preview image, a small JPEG data URI (None once it ended)
    preview: str | None = None
    #: where its events are posted (webhooks/); None: nowhere
    webhook: Webhook | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskRecord:
        return cls(
            task_uid=row["task_uid"],
            public_key=row["public_key"],
            action=row["action"],
            status=TaskStatus(row["status"]),
            spec=GenerationSpec.from_json(row["spec"]),
            cost=row["cost"],
            progress=row["progress"],
            result_keys=tuple(row["result_keys"] or ()),
            seeds=tuple(row["seeds"] or ()),
            error_code=row["error_code"],
            error_message=row["error_message"],
            worker=row["worker"],
            attempt=row.get("attempt", 0),
            webhook=Webhook(row["webhook_url"], tuple(row["webhook_events"])) if row.get("webhook_url") else None,
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            preview=row.get("preview"),
        )


#: A1111 sampler names picserve accepts (case-insensitive); engine/samplers.py maps each to diffusers.
SAMPLER_NAMES = (
    "Euler",
    "Euler a",
    "LMS",
    "LMS Karras",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DDIM",
    "UniPC",
    "DEIS",
    "LCM",
)


#: what a task's webhook may be told: it was taken by a worker, how far it is, that it ended
WEBHOOK_EVENTS = ("start", "progress", "completed")


@dataclass(frozen=True)
class Webhook:
    """Where a task's events are posted, and which of WEBHOOK_EVENTS."""

    url: str
    events: tuple[str, ...] = ("completed",)


@dataclass(frozen=True)
class WebhookDelivery:
    """One event of one task to post to its webhook: made when the event happens (in the same
    transaction as the task's change), tried until delivered or its attempts run out."""

    delivery_id: str
    task_uid: str
    public_key: str
    event: str
    url: str
    #: the task's status and progress when the event happened (what its body reports)
    status: TaskStatus
    progress: float = 0.0
    #: tries so far, and how they went: "pending", "delivered" or "failed" (attempts ran out)
    attempts: int = 0
    state: str = "pending"
    last_error: str | None = None
    delivered_at: datetime | None = None


def canonical_sampler(name: str) -> str | None:
    """The accepted spelling of an A1111 sampler name, or None when it is unknown."""
    wanted = " ".join(name.split()).lower()
    return next((s for s in SAMPLER_NAMES if s.lower() == wanted), None)


@dataclass(frozen=True)
class Capacity:
    """A worker's device memory and what its main models take (bytes), for the registry."""

    #: the device's whole memory (the GPU's; the machine's RAM for a CPU worker); None: unknown
    device_total: int | None = None
    #: bytes of main-model weights it keeps on the device (PICSERVE_MODEL_MEMORY); None: unbounded
    model_budget: int | None = None
    #: bytes of the main models on the device now
    model_bytes: int = 0
    #: bytes of the main models in its RAM tier
    host_bytes: int = 0
    #: main models it keeps on the device at once: what the fetch predicts taking a task evicts
    model_slots: int = 1
    #: the compute dtype its models run in ("float16", "bfloat16", "float32"); None: not reported
    dtype: str | None = None

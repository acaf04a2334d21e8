"""Values that cross picserve's layers: frozen, snake_case, no I/O, no wire names."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "HAIR_OPTIONS",
    "IMPORT_NOMINAL_BYTES",
    "NO_MARGINS",
    "SAMPLER_NAMES",
    "SPEC_TYPES",
    "UPSCALE_MAX_PASSES",
    "WEBHOOK_EVENTS",
    "Account",
    "ActionSpec",
    "Capacity",
    "ControlUnit",
    "CutoutSpec",
    "EraseSpec",
    "FaceFix",
    "GenerationSpec",
    "Hires",
    "ImportSpec",
    "Needs",
    "RequestId",
    "Requeue",
    "Run",
    "RunEnd",
    "RunRecord",
    "SubModel",
    "TaskRecord",
    "TaskStatus",
    "UpscaleSpec",
    "Webhook",
    "WebhookDelivery",
    "canonical_sampler",
    "gave_up_message",
    "register_spec",
    "spec_digest",
    "spec_from_json",
    "upscale_passes",
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
class ControlUnit:
    """One ControlNet unit of a generation (PICPIK's `ControlNet`, §4.4), checked against the catalog.

    Its image and mask are entries of the spec's `control_images` (by index), so that they are stashed
    in the store while the task is queued like every reference image."""

    #: the control model and what it is: "controlnet" or "union" (a ControlNet-Union, models/controlnet), or
    #: "ipadapter" (models/ipadapter: the image is a reference whose content and style guide the generation)
    model_code: str
    model_type: str = "controlnet"
    #: the control image: `GenerationSpec.control_images[image_index]`
    image_index: int = 0
    #: where the unit applies (white), `control_images[mask_index]`; None: everywhere
    mask_index: int | None = None
    invert_mask: bool = False
    #: what turns the image into the control map ("none": it already is one) and its parameters, by their
    #: InferenceParams names (CannyLowThreshold, Resolution: the side it works at, A1111's "Preprocessor
    #: resolution", …), checked (preprocessors.bad_params) and with the preprocessor's defaults filled in
    preprocessor: str = "none"
    preprocessor_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    weight: float = 1.0
    #: the fraction of the denoising steps the unit acts in: [start, end)
    start: float = 0.0
    end: float = 1.0
    #: Balanced, PromptMoreImportant or ControlNetMoreImportant (A1111's control modes)
    control_mode: str = "Balanced"
    #: how the control image is brought to the generation's size (A1111's resize modes)
    resize_mode: str = "ResizeAndFill"
    #: a ControlNet-Union's control type (openpose, depth, softedge, canny, normal, segment, tile, repaint)
    control_type: str | None = None


@dataclass(frozen=True)
class Hires:
    """Hires fix (A1111's `enable_hr`): the image is made at `width`×`height` first (a size the model is
    good at), upscaled to the spec's size, and denoised again there by img2img."""

    #: the first pass's size (a multiple of 8, below the spec's)
    width: int
    height: int
    #: "Latent" (the latents upscaled, bilinear), "Lanczos", or an upscaler's ModelCode (models/upscale)
    upscaler: str = "Latent"
    #: the second pass's steps (img2img: int(steps × strength) of them run) and its denoising strength
    steps: int = 10
    strength: float = 0.7


@dataclass(frozen=True)
class FaceFix:
    """A generation's face restoration after it is made (RestoreFaces' models and strength)."""

    restorer_code: str
    detector_code: str
    strength: float = 0.5


#: outpainting margins (left, top, right, bottom) of a spec that adds none
NO_MARGINS = (0, 0, 0, 0)


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
    #: ControlNet units (at most 3) and the images and masks they use, base64 as received (while queued,
    #: in the store under `control_images_keys`, tasks/references.py)
    control_units: tuple[ControlUnit, ...] = ()
    control_images: tuple[str | None, ...] = ()
    control_images_keys: tuple[str | None, ...] = ()
    #: the units' control maps are stored after the images (AI Horde's return_control_map)
    return_control_maps: bool = False
    #: hires fix: a first pass at a smaller size, upscaled, and a second pass at width×height
    hires: Hires | None = None
    #: inpainting: the mask inverted (black = repaint), and feathered by a Gaussian blur of this radius
    #: in px (A1111's mask blur): the result is blended into the image by the blurred mask, and pixels
    #: where it is 0 are the input's, bit for bit
    invert_mask: bool = False
    mask_blur: int = 0
    #: inpainting: "whole" (the whole image is generated) or "masked" (A1111's "inpaint area: only
    #: masked": the mask's box plus `masked_padding` px, generated at about `masked_resolution`² px and
    #: pasted back)
    inpaint_area: str = "whole"
    masked_padding: int = 32
    masked_resolution: int = 1024
    #: outpainting: px added (left, top, right, bottom); the image, fitted to the rest of width×height,
    #: sits inside them; the margins are pre-filled from the image's edges and repainted
    outpaint: tuple[int, int, int, int] = NO_MARGINS
    #: inpainting: an image (fitted to the image's size) whose content starts the masked region instead of
    #: the image's own (ModifyMaskedPixels' Image2Image naming another entry), and its key while queued
    fill_image: str | None = None
    fill_image_key: str | None = None
    #: every image's faces restored once it is made (engine/faces.py)
    face_fix: FaceFix | None = None
    #: the prompts as the client sent them, before any translation
    original_prompt: str | None = None
    original_negative_prompt: str | None = None
    warnings: tuple[str, ...] = ()

    #: the task kind (the engine pipeline that runs it) and the version of this spec's stored form
    kind: ClassVar[str] = "generation"
    #: 2: ControlNet units (a version-1 row reads as a spec without them); 3: hires fix, mask blur and
    #: inversion, only-masked inpainting, outpainting (an earlier row reads as a spec without them);
    #: 4: face restoration
    version: ClassVar[int] = 4

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
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> GenerationSpec:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data["sub_models"] = tuple(SubModel(**s) for s in data.get("sub_models", ()))
        data["warnings"] = tuple(data.get("warnings", ()))
        data["control_units"] = tuple(ControlUnit(**u) for u in data.get("control_units", ()))
        for name in ("control_images", "control_images_keys"):
            data[name] = tuple(data.get(name, ()))
        hires = data.get("hires")
        data["hires"] = Hires(**hires) if hires else None
        data["outpaint"] = tuple(data.get("outpaint", NO_MARGINS))
        face_fix = data.get("face_fix")
        data["face_fix"] = FaceFix(**face_fix) if face_fix else None
        return cls(**data)

    def needs(self) -> Needs:
        return Needs(
            self.model_code,
            tuple(s.code for s in self.sub_models if s.kind == "lora"),
            tuple(dict.fromkeys(u.model_code for u in self.control_units)),
        )

    def work(self) -> int:
        """Pixels × steps × images (of both passes, with hires fix; of the generated crop when only the
        masked region is)."""
        width, height = self.width, self.height
        if self.inpaint_area == "masked" and self.mode == "inpaint":
            width = height = min(self.masked_resolution, max(width, height))
        if self.hires is None:
            return width * height * self.steps * self.batch_size
        first = self.hires.width * self.hires.height * self.steps
        second = width * height * max(1, int(self.hires.steps * self.hires.strength))
        return (first + second) * self.batch_size

    def cost(self, divisor: int) -> int:
        """Credits: pixels × steps × images / divisor, at least 1."""
        return max(1, math.ceil(self.work() / divisor))


@dataclass(frozen=True)
class Needs:
    """The models a task's run loads: what the workers' fetch routes it by (affinity) and what the
    admission check sizes. None: no main model (an action that runs a model of its own kind)."""

    model_code: str | None = None
    loras: tuple[str, ...] = ()
    #: control models (ControlNets): held beside the main model, routed to like LoRAs
    controls: tuple[str, ...] = ()


@runtime_checkable
class ActionSpec(Protocol):
    """What every task's spec is: a frozen value of one task kind, stored as versioned JSON.

    A task is a tagged union of these: its row keeps `kind` and `version` beside the JSON, and
    `spec_from_json` reads it back with the class registered for the kind. A new action brings its
    own spec class (register_spec), with its checks done before it is made (submission.py)."""

    kind: ClassVar[str]
    version: ClassVar[int]

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON-able), read back by `from_json(data, version)`."""
        ...

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> ActionSpec:
        """The spec from its stored form, written by this or an earlier `version` of the class."""
        ...

    def needs(self) -> Needs:
        """The models its run needs (routing, the worker registry, admission)."""
        ...

    def work(self) -> int:
        """How much work its run is, in the kind's own unit (pixels × steps × images for a generation):
        what a worker's run deadline scales with, by the speed it measured on earlier runs of the kind."""
        ...

    def cost(self, divisor: int) -> int:
        """What it costs in credits (PICSERVE_CREDIT_DIVISOR: `divisor`)."""
        ...


#: the spec class of each task kind
SPEC_TYPES: dict[str, type[ActionSpec]] = {}


def register_spec(cls: type[ActionSpec]) -> type[ActionSpec]:
    """Make `cls` the spec of its task kind (a decorator); a kind is registered once."""
    known = SPEC_TYPES.setdefault(cls.kind, cls)
    if known is not cls:
        raise ValueError(f"task kind {cls.kind!r} is already registered to {known.__name__}")
    return cls


def spec_from_json(kind: str, version: int, data: str | Mapping[str, Any]) -> ActionSpec:
    """A stored spec read back by the class of its task kind. Given as JSON text (what a poll reads),
    a spec is decoded once and shared while it is among the recently read ones: specs are immutable, and
    a client polls the same tasks again and again."""
    if isinstance(data, str) and len(data) <= _SHARED_SPEC_CHARS:
        return _shared_spec(kind, version, data)
    return _spec_from_json(kind, version, data)


#: the longest JSON text of a spec that is kept decoded (a generation's is 1–2 KB; texts are kept with it)
_SHARED_SPEC_CHARS = 16 * 1024


@functools.lru_cache(maxsize=4096)
def _shared_spec(kind: str, version: int, text: str) -> ActionSpec:
    return _spec_from_json(kind, version, text)


def _spec_from_json(kind: str, version: int, data: str | Mapping[str, Any]) -> ActionSpec:
    cls = SPEC_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown task kind {kind!r} (a newer picserve wrote it?)")
    if version > cls.version:
        raise ValueError(f"task kind {kind!r} version {version} is newer than this picserve's ({cls.version})")
    return cls.from_json(data, version)


register_spec(GenerationSpec)


@dataclass(frozen=True)
class UpscaleSpec:
    """ResizeImage: one image brought to width×height, by an upscaling model (tiled) then a Lanczos
    resample; a target no larger than the image either way is a plain Lanczos downscale."""

    width: int
    height: int
    #: the input's size, read at submit (what the work and the model's passes are planned from)
    source_width: int
    source_height: int
    #: the upscaler (models/upscale); None: no model, a plain resample (a downscale, or none installed)
    model_code: str | None = None
    #: the model's native scale (its catalog entry's), so the worker and the deadline plan passes
    model_scale: int = 4
    #: the image, base64 as received (or fetched from a finished task: chaining), and its store key
    #: while queued (tasks/references.py)
    image: str | None = None
    image_key: str | None = None

    kind: ClassVar[str] = "upscale"
    version: ClassVar[int] = 1

    @property
    def passes(self) -> int:
        """Model passes to reach the target (`upscale_passes`; 0: no model, or a downscale only)."""
        if self.model_code is None or (self.width <= self.source_width and self.height <= self.source_height):
            return 0
        source, target = (self.source_width, self.source_height), (self.width, self.height)
        return upscale_passes(source, target, self.model_scale)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> UpscaleSpec:
        return cls(**(json.loads(text) if isinstance(text, str) else dict(text)))

    def needs(self) -> Needs:
        # no main model: an upscaler loads in well under a second, so tasks are not held for a holder
        return Needs()

    def work(self) -> int:
        """The model's output pixels over its passes, plus the output (the resample)."""
        pixels, total = self.source_width * self.source_height, self.width * self.height
        for _ in range(self.passes):
            pixels *= self.model_scale**2
            total += pixels
        return total

    def cost(self, divisor: int) -> int:
        """Credits: the output's pixels / divisor (1 per megapixel by default), at least 1."""
        return max(1, math.ceil(self.width * self.height / divisor))


#: ResizeImage's model passes at most: the rest of the way is the Lanczos resample
UPSCALE_MAX_PASSES = 3


def upscale_passes(source: tuple[int, int], target: tuple[int, int], scale: int) -> int:
    """Model passes of `scale` that make `source` cover `target` both ways, 1..UPSCALE_MAX_PASSES (a
    scale-1 model, a restorer, runs once): what the worker runs and what the spec's work counts."""
    if scale < 2:
        return 1
    wanted = max(target[0] / source[0], target[1] / source[1])
    return max(1, min(UPSCALE_MAX_PASSES, math.ceil(math.log(wanted) / math.log(scale) - 1e-9)))


#: RemoveBackground's HairOptimization: alpha matting on, off, or where the mask's edge is soft
HAIR_OPTIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class CutoutSpec:
    """RemoveBackground and RemoveBackgroundsInBatch: each image's subject cut out (RGBA) or its mask."""

    #: each image's size, read at submit
    sizes: tuple[tuple[int, int], ...]
    #: the segmentation model (models/background)
    model_code: str
    #: [x1, y1, x2, y2]: only this part of the (single) image holds the subject; None: the whole image
    box: tuple[int, int, int, int] | None = None
    #: PICPIK's names: the matting's erode size (px) and its trimap thresholds (0..255)
    erode_size: int = 15
    foreground_threshold: int = 240
    background_threshold: int = 15
    #: alpha matting: "on", "off", or "auto" (where the mask's edge is soft: hair, fur)
    hair: str = "auto"
    only_mask: bool = False
    #: the images, base64 as received, and their store keys while queued (tasks/references.py)
    images: tuple[str | None, ...] = ()
    images_keys: tuple[str | None, ...] = ()

    kind: ClassVar[str] = "cutout"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> CutoutSpec:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data["sizes"] = tuple((int(w), int(h)) for w, h in data["sizes"])
        data["box"] = tuple(data["box"]) if data.get("box") is not None else None
        data["images"] = tuple(data.get("images", ()))
        data["images_keys"] = tuple(data.get("images_keys", ()))
        return cls(**data)

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        return sum(w * h for w, h in self.sizes)

    def cost(self, divisor: int) -> int:
        """Credits: each image's pixels / divisor (1 per megapixel by default), at least 1 per image."""
        return sum(max(1, math.ceil(w * h / divisor)) for w, h in self.sizes)


@dataclass(frozen=True)
class EraseSpec:
    """RemoveContents with an eraser (models/inpaint: a LaMa-family model spandrel loads): what the mask
    covers is removed and filled from its surroundings, with no prompt. (Without an eraser installed,
    RemoveContents is a GenerationSpec: an SDXL inpainting pass, specs/remove_contents.py.)"""

    #: the image's size, read at submit
    width: int
    height: int
    #: the eraser (models/inpaint)
    model_code: str
    #: the mask inverted (black = erase), and feathered by a Gaussian blur of this radius in px: pixels
    #: where the blurred mask is 0 are the input's, bit for bit
    invert_mask: bool = False
    mask_blur: int = 12
    #: the image and its mask (white = erase), base64 as received, and their store keys while queued
    image: str | None = None
    image_key: str | None = None
    mask: str | None = None
    mask_key: str | None = None

    kind: ClassVar[str] = "erase"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> EraseSpec:
        return cls(**(json.loads(text) if isinstance(text, str) else dict(text)))

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        return self.width * self.height

    def cost(self, divisor: int) -> int:
        """Credits: the image's pixels / divisor (1 per megapixel by default), at least 1."""
        return max(1, math.ceil(self.width * self.height / divisor))


#: the bytes an import's run deadline is sized for (the file's size is known only once it downloads);
#: its progress writes keep a longer download alive
IMPORT_NOMINAL_BYTES = 1 << 30


@dataclass(frozen=True)
class ImportSpec:
    """ImportModel (admin keys only): download a model file and file it in the models folder, with the
    checks of `picserve models add` (modelfiles.add). The source and its token are sealed with the
    server secret (keycipher) in the stored form: a URL may carry a token in its query, and neither
    may be stored in clear. `source` is what may be shown and logged (no credentials, no token-like
    query parameters)."""

    #: the URL and the bearer token (or None), each a `fernet:` token of the server secret
    sealed_url: str
    sealed_token: str | None
    #: the URL as it may be shown (modelfiles' source label)
    source: str
    sha256: str | None = None
    #: the ModelCode (None: from the file's name) and the kind (None: from its tensors)
    name: str | None = None
    model_kind: str | None = None
    force: bool = False

    kind: ClassVar[str] = "import"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> ImportSpec:
        return cls(**(json.loads(text) if isinstance(text, str) else dict(text)))

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        """Bytes, nominally (IMPORT_NOMINAL_BYTES): the size is unknown until the download answers."""
        return IMPORT_NOMINAL_BYTES

    def cost(self, divisor: int) -> int:
        """An operator's action: no credits."""
        return 0


register_spec(UpscaleSpec)
register_spec(CutoutSpec)
register_spec(EraseSpec)
register_spec(ImportSpec)


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
    #: scheduling among keys (worker/routing.py): a higher priority is served first, strictly; among
    #: keys of equal priority, the one with the fewest running tasks per unit of weight
    priority: int = 0
    weight: float = 1.0
    #: the webhook of this key's tasks that name none (events: completed only); None: no default
    webhook_url: str | None = None
    #: an operator's key: may send the admin actions (ImportModel)
    admin: bool = False


@dataclass(frozen=True)
class RequestId:
    """What makes a submit idempotent: the client's request_uuid and a fingerprint of the signed
    parameters. A resend with both equal within `window` seconds gets the first TaskUID back."""

    request_uuid: str
    fingerprint: str
    window: float = 24 * 3600

    #: an `Idempotency-Key` header (the /v1 routes) is stored as a request_uuid with this prefix
    HEADER_PREFIX: ClassVar[str] = "idempotency-key:"

    @staticmethod
    def field_of(request_uuid: str) -> tuple[str, str]:
        """The field a stored request_uuid came from, and its value as the client sent it."""
        if request_uuid.startswith(RequestId.HEADER_PREFIX):
            return "Idempotency-Key", request_uuid.removeprefix(RequestId.HEADER_PREFIX)
        return "request_uuid", request_uuid


@dataclass(frozen=True)
class Run:
    """One worker's attempt at one task. Every write a worker makes names its run, so the writes of a
    run that was superseded (its worker froze past the heartbeat timeout and the task went to another)
    are refused instead of overwriting the newer run's."""

    task_uid: str
    worker: str
    #: the task's attempt number when this run took it (1 for the first run)
    attempt: int


class RunEnd(enum.StrEnum):
    """How a run ended, as its record keeps it (migration 0010)."""

    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    #: its worker was shutting down: handed back to the queue (not a loss)
    REQUEUED = "requeued"
    #: its worker died under it (killed, crashed, frozen past the heartbeat timeout): a loss
    LOST = "lost"
    #: its worker's device failed for good (a sticky CUDA error): a loss
    DEVICE_LOST = "device_lost"
    #: it gave no sign of life within its deadline (the engine hung): a loss
    TIMED_OUT = "timed_out"

    @property
    def is_loss(self) -> bool:
        """A loss counts against PICSERVE_MAX_LOST_RUNS: the run took its worker down, or might have."""
        return self in (RunEnd.LOST, RunEnd.DEVICE_LOST, RunEnd.TIMED_OUT)

    @property
    def in_words(self) -> str:
        return _RUN_END_WORDS[self]


_RUN_END_WORDS = {
    RunEnd.FINISHED: "finished",
    RunEnd.FAILED: "failed",
    RunEnd.CANCELED: "cancelled",
    RunEnd.REQUEUED: "handed back by a stopping worker",
    RunEnd.LOST: "its worker died",
    RunEnd.DEVICE_LOST: "its worker's device failed",
    RunEnd.TIMED_OUT: "it hung past its deadline",
}


@dataclass(frozen=True)
class RunRecord:
    """One ended run of a task: who ran it, when, and how it ended."""

    task_uid: str
    attempt: int
    worker: str | None
    started_at: datetime | None
    ended_at: datetime
    ended_as: RunEnd
    #: the failure's message, or what the loss was (a device error, the deadline), or ""
    detail: str = ""


@dataclass(frozen=True)
class Requeue:
    """What handing a task back to the queue did: queued it again, or ended it (Error, ErrorCode 505)
    because its runs were lost more than PICSERVE_MAX_LOST_RUNS times."""

    task_uid: str
    #: QUEUING (queued again) or ERROR (given up)
    status: TaskStatus
    #: its lost runs so far, this one included
    lost_runs: int
    #: `spec_digest` of the task's spec: what operators match poison requests by in the logs
    digest: str

    @property
    def gave_up(self) -> bool:
        return self.status is TaskStatus.ERROR


def spec_digest(spec: ActionSpec) -> str:
    """A short digest of a spec's parameters (sha256 of its canonical JSON, first 16 hex digits): the
    same request gives the same digest, and the log names no prompt."""
    canonical = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{spec.kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def gave_up_message(losses: Mapping[RunEnd, int]) -> str:
    """The ErrorMassage of a task ended after too many lost runs (`losses`: each loss cause, counted)."""
    total = sum(losses.values())
    causes = "; ".join(f"{cause.in_words}: {count}" for cause, count in losses.items() if count)
    return (
        f"this task stopped its workers: {total} runs ended without it ({causes}); "
        "it was not run again, and nothing was charged"
    )


@dataclass(frozen=True)
class TaskRecord:
    """One task as stored: its request, its state and its results."""

    task_uid: str
    public_key: str
    action: str
    status: TaskStatus
    #: the task's spec: a GenerationSpec, or the spec of another task kind (ActionSpec)
    spec: ActionSpec
    cost: int = 0
    progress: float = 0.0
    #: storage keys of the result images, in batch order
    result_keys: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    #: the result's texts (TaskDetail.TxtList): an import's line of what it filed, and its warnings
    result_texts: tuple[str, ...] = ()
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
            spec=spec_from_json(row.get("spec_kind", "generation"), row.get("spec_version", 1), row["spec"]),
            cost=row["cost"],
            progress=row["progress"],
            result_keys=tuple(row["result_keys"] or ()),
            seeds=tuple(row["seeds"] or ()),
            result_texts=tuple(row.get("result_texts") or ()),
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

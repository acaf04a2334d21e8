"""Point segmenters (models/segment) run by transformers, and ExtractContents' pipeline.

PICPIK's `ExtractContents` cuts out what the client points at: `IncludePointList` on the object,
`ExcludePointList` on what is not, the result the cut-out (RGBA) or its mask, finished as
RemoveBackground's are (`cutout.finish`: PICPIK's matting thresholds, erode size and HairOptimization,
the input's own alpha kept as a product, OnlyMask the cut-out's very alpha).

**Models** (`PointSegmenters`). A point segmenter is a Segment Anything folder as transformers saves it
(`save_pretrained`: config.json with `model_type` "sam", the weights, preprocessor_config.json): SAM
ViT-B/L/H, SlimSAM, any checkpoint that loads as `SamModel`. It is loaded with `local_files_only=True`
(nothing is ever downloaded), refused unless every weight of the model is in its files (transformers
would fill a missing one with random values and say so only in a log line), and its processor must
feed the model its own input size. A folder without a processor config gets SAM's own (the longest
side resized to the model's input size, ImageNet normalisation, padded to a square). SAM-HQ
(`sam_hq`) is another class (`SamHQModel`, its decoder reads the encoder's intermediate features) and
is refused. On CUDA the image encoder (nearly all the weights and the work) computes in the engine's
dtype, the prompt encoder and mask decoder in fp32 (bf16 keeps 8 bits of a point's position: steps of
4 px on a 1024² input); on the CPU all of it in fp32. A few models are kept, least recently used first
out; one is loaded again when a file of its folder changed.

**Prompt and mask** (`segment`, `predict`). The image is encoded once; the points, include labelled 1
and exclude 0, go to the prompt encoder in pixel coordinates of the image (the processor scales them
to the model's input). Which mask is returned:

1. Candidates. One point (a single include, no exclude) is ambiguous (a shirt or the person in it), and
   SAM answers it with its three multimask outputs. With two points or more SAM's fourth output, the
   single mask it was trained to give for several prompts (SAM paper §3; its predictor's advice:
   `multimask_output=False` for multiple points), comes first, followed by the three.
2. A candidate agrees with a point when its logit there, at the image's full size, is above 0 for an
   include point and not above 0 for an exclude point. The candidates that agree with every point are
   kept; when none does, those that agree with the most points.
3. Of those, for several points the single-mask output if it is among them; otherwise, and for one
   point, the one with SAM's highest predicted IoU.

The mask is soft: SAM's low-resolution logits (256² for a 1024² input) brought to the image's size by
the processor's `post_process_masks` (bilinear, as SAM binarises them) and put through a sigmoid, ×255.
So its 50 % contour is SAM's own binary mask, and the sigmoid's ramp across the edge (a pixel or two of
SAM's mask: hard; wider over hair and fur) is what the auto-hair rule reads, at the mask's own size
(`model_size`) as for RemoveBackground's models, and what the matting's trimap thresholds cut.

Then the points are made to hold, which is picserve's rule, not SAM's (its predictor returns the mask
as it is): a disc of POINT_RADIUS px around each include point is set to 255 and around each exclude
point to 0 (an exclude disc over an include one wins, but never over the include point's own pixel),
in the mask and again in the finished alpha, after the matting. Where SAM's chosen mask already agrees
with the points (the rule above looks for such a mask first, and a trained SAM nearly always finds one)
this changes nothing; where it does not, the client still gets what PICPIK's fields promise: every
include point opaque (255, times the input's own alpha) and every exclude point transparent.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, domain_tools, errors, reference_images
from picserve.engine import cutout, devices, loader, memory, pipelines, toolcache
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback
from picserve.modelinfo import ToolFacts

__all__ = [
    "KEEP",
    "POINT_RADIUS",
    "PointSegmenters",
    "Segmentation",
    "choose",
    "extract",
    "identify",
    "load",
    "point_masks",
    "predict",
    "run",
    "segment",
]

log = logging.getLogger(__name__)

#: point segmenters kept loaded (SAM ViT-H: 641M parameters, 2.5 GB in fp32), least recently used out first
KEEP = 2
#: the radius, in image pixels, of the disc around each point that is made to agree with it
POINT_RADIUS = 2
#: the `model_type` of the folders run here (SAM and SlimSAM both load as transformers' SamModel)
MODEL_TYPES = ("sam",)
#: what a point segmenter is called in messages
_WHAT = "point segmenter"

Point = tuple[int, int]


class PointSegmenters:
    """The point segmenters of models/segment a worker keeps loaded on its device (engine/toolcache.py):
    `(SamModel, SamProcessor)` per ModelCode, the `keep` most recently used, loaded again when a file of
    the folder changed (name, mtime or size).

    Args:
        catalog: where the codes are looked up (kind "segment": the folder is the entry's path).
        device: the engine's device.
        dtype: the engine's compute dtype, used on CUDA (on the CPU the model computes in fp32).
        keep: how many models stay loaded (at least 1).
    """

    def __init__(
        self, catalog: catalog_module.Catalog, device: torch.device, dtype: torch.dtype, keep: int = KEEP
    ) -> None:
        self.catalog, self.device = catalog, torch.device(device)
        self.dtype = dtype if self.device.type == "cuda" else torch.float32
        self._models = toolcache.ToolModels(
            catalog, "segment", _WHAT, self._load, max(1, keep), identity=_folder_version
        )

    def loaded(self) -> list[str]:
        """The codes of the models held, least recently used first."""
        return self._models.loaded()

    def get(self, code: str) -> tuple[Any, Any]:
        """`(SamModel, SamProcessor)` of point segmenter `code`, the model on the device in eval mode.
        ModelLoadError (naming the code and why) when the folder is gone or transformers does not load it
        as a SAM model; OutOfMemory when it does not fit."""
        return self._models.get(code)

    def _load(self, entry: catalog_module.Entry) -> tuple[Any, Any]:
        return load(entry.code, entry.path, self.device, self.dtype)


def _folder_version(entry: catalog_module.Entry) -> Hashable:
    """The files of a model's folder, each (name, mtime_ns, size): a rewritten weights file makes the
    loaded model stale even where the folder's own mtime does not change."""
    try:
        files = sorted(p for p in entry.path.iterdir() if p.is_file() and not p.name.startswith("."))
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _check_config(code: str, folder: Path) -> None:
    """ModelLoadError naming `code` unless the folder's config.json is a SAM model's."""
    where = f"{_WHAT} {code!r}"
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise errors.ModelLoadError(f"{where}: {folder.name} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise errors.ModelLoadError(f"{where}: {folder.name}/config.json is unreadable ({_reason(exc)})") from None
    if not isinstance(config, dict):
        raise errors.ModelLoadError(f"{where}: {folder.name}/config.json is no transformers config")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        hint = " (SAM-HQ: its decoder needs SamHQModel, which is not run here)" if model_type == "sam_hq" else ""
        raise errors.ModelLoadError(
            f"{where}: {folder.name} is a {model_type!r} model{hint}, not Segment Anything "
            "(config.json model_type 'sam': SAM, SlimSAM)"
        )


def load(
    code: str, folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """`(SamModel, SamProcessor)` of the SAM folder `folder` (point segmenter `code`), the model on
    `device` in eval mode, its image encoder (nearly all of its weights and work) in `dtype`, its prompt
    encoder and mask decoder in fp32 (see the module docstring). Nothing is downloaded.

    ModelLoadError naming `code`: no or unreadable config.json, a config that is not SAM's, weights
    transformers cannot read or that lack weights of the model, a processor whose input size is not the
    model's. OutOfMemory when the model does not fit.
    """
    from transformers import SamImageProcessor, SamModel, SamProcessor

    where = f"{_WHAT} {code!r}"
    _check_config(code, folder)
    try:
        model, info = SamModel.from_pretrained(
            str(folder), dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:  # OSError (no weights), safetensors' and torch's errors, config errors: the folder's
        if memory.is_out_of_memory(exc):
            raise errors.OutOfMemory(f"{where}: ran out of memory loading it") from exc
        raise errors.ModelLoadError(
            f"{where}: transformers cannot load {folder.name} as SamModel ({_reason(exc)})"
        ) from exc
    # transformers fills a weight the file lacks with random values and only logs it; a buffer it lacks
    # (none is learnt) is left to the model's own initialisation
    parameters = {name for name, _ in model.named_parameters()}
    missing = sorted(set(info.get("missing_keys") or ()) & parameters)
    if missing:
        raise errors.ModelLoadError(
            f"{where}: the files in {folder.name} lack {len(missing)} of SamModel's weights "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}): not this model's weights"
        )
    side = int(model.config.vision_config.image_size)
    try:
        if any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            processor = SamProcessor.from_pretrained(str(folder), local_files_only=True)
        else:  # SAM's own preprocessing at the model's input size
            low = side // int(model.config.vision_config.patch_size) * 4
            processor = SamProcessor(
                image_processor=SamImageProcessor(
                    size={"longest_edge": side},
                    pad_size={"height": side, "width": side},
                    mask_pad_size={"height": low, "width": low},
                )
            )
    except Exception as exc:
        raise errors.ModelLoadError(f"{where}: its processor config does not load ({_reason(exc)})") from exc
    image_processor = processor.image_processor
    pad = image_processor.pad_size
    longest = image_processor.size["longest_edge"]
    if (pad["height"], pad["width"]) != (side, side) or longest != side:
        raise errors.ModelLoadError(
            f"{where}: its processor resizes to {longest} and pads to {pad['width']}x{pad['height']}, but the "
            f"model takes {side}x{side}"
        )
    try:
        model.vision_encoder.to(dtype)  # the encoder in `dtype`; the prompt encoder and decoder stay fp32
        model = model.to(device).eval()
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise errors.OutOfMemory(f"{where}: the device ran out of memory loading it") from exc
        raise
    log.info(
        "%s %s loaded: SAM at %dpx, vision width %d, %s on %s",
        _WHAT,
        code,
        side,
        model.config.vision_config.hidden_size,
        str(dtype).removeprefix("torch."),
        device,
    )
    return model, processor


# -- the segmentation -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """One point-prompted segmentation (`predict`)."""

    #: uint8 (height, width) of the image: 255·sigmoid(SAM's logits), the points' discs pinned
    mask: np.ndarray
    #: the size of SAM's own mask over the image (width, height): what the auto-hair rule measures at
    model_size: tuple[int, int]
    #: which output was chosen: "single" (SAM's mask for several prompts) or "multimask 0/1/2"
    output: str
    #: SAM's predicted IoU of it
    iou: float
    #: whether SAM's mask agreed with every point before they were pinned
    agreed: bool


def choose(agree: np.ndarray, iou: Sequence[float], single_first: bool) -> int:
    """The index of the candidate mask to return (see the module docstring's rule).

    `agree`: bool (candidates, points), whether each candidate agrees with each point; `iou`: SAM's
    predicted IoU of each; `single_first`: candidate 0 is SAM's single-mask output for several points,
    taken whenever it is among those agreeing with the most points."""
    counts = np.asarray(agree, dtype=bool).sum(axis=1)
    eligible = np.flatnonzero(counts == counts.max())
    if single_first and eligible[0] == 0:
        return 0
    scores = np.asarray(iou, dtype=np.float64)[eligible]
    return int(eligible[int(np.argmax(scores))])


def point_masks(
    size: tuple[int, int], include: Sequence[Point], exclude: Sequence[Point], radius: int = POINT_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """(keep, drop): bool (height, width) of an image of `size`, the discs of `radius` px around the
    include points and around the exclude points. An include point's own pixel is never in `drop` unless
    it is an exclude point too (where `drop` wins when both are applied, keep first)."""
    width, height = size
    keep = np.zeros((height, width), dtype=bool)
    drop = np.zeros((height, width), dtype=bool)
    r = max(0, int(radius))
    dy, dx = np.ogrid[-r : r + 1, -r : r + 1]
    disc = dx * dx + dy * dy <= r * r
    for points, target in ((include, keep), (exclude, drop)):
        for x, y in points:
            x0, y0, x1, y1 = max(0, x - r), max(0, y - r), min(width, x + r + 1), min(height, y + r + 1)
            target[y0:y1, x0:x1] |= disc[y0 - (y - r) : y1 - (y - r), x0 - (x - r) : x1 - (x - r)]
    excluded = {(int(x), int(y)) for x, y in exclude}
    for x, y in include:
        if (int(x), int(y)) not in excluded:
            drop[y, x] = False
    return keep, drop


def _check_points(size: tuple[int, int], include: Sequence[Point], exclude: Sequence[Point]) -> None:
    width, height = size
    if not include:
        raise errors.GenerationError("IncludePointList: at least one point is needed")
    for field, points in (("IncludePointList", include), ("ExcludePointList", exclude)):
        for i, (x, y) in enumerate(points):
            if not (0 <= x < width and 0 <= y < height):
                raise errors.GenerationError(f"{field}[{i}]: ({x}, {y}) is outside the {width}x{height} image")


def predict(
    model: Any, processor: Any, image: Image.Image, include: Sequence[Point], exclude: Sequence[Point] = ()
) -> Segmentation:
    """SAM's mask of what the points pick in `image` (see the module docstring: which output, the soft
    mask, the pinned points). `include`/`exclude`: (x, y) pixels of the image, at least one include, all
    inside it (GenerationError otherwise). OutOfMemory when the device runs out."""
    include = [(int(x), int(y)) for x, y in include]
    exclude = [(int(x), int(y)) for x, y in exclude]
    _check_points(image.size, include, exclude)
    points = [[x, y] for x, y in (*include, *exclude)]
    labels = [1] * len(include) + [0] * len(exclude)
    inputs = processor(
        images=image.convert("RGB"), input_points=[[points]], input_labels=[[labels]], return_tensors="pt"
    )
    device = model.device
    encoder_dtype = next(model.vision_encoder.parameters()).dtype
    several = len(points) > 1
    doing = f"segmenting a {image.width}x{image.height} image: send a smaller image"
    free = functools.partial(loader.free_memory, device)
    with memory.tool_run(device, doing, free), torch.inference_mode(), devices.on_device(device):
        embeddings = model.get_image_embeddings(inputs["pixel_values"].to(device, encoder_dtype))
        prompt = {
            "image_embeddings": embeddings.float(),
            "input_points": inputs["input_points"].to(device, torch.float32),
            "input_labels": inputs["input_labels"].to(device),
        }
        outputs = [model(**prompt, multimask_output=False)] if several else []
        outputs.append(model(**prompt, multimask_output=True))
        logits = torch.cat([o.pred_masks[0, 0] for o in outputs]).float()  # (candidates, 256, 256)
        ious = torch.cat([o.iou_scores[0, 0] for o in outputs]).float().cpu().tolist()
        del embeddings, outputs
        original = inputs["original_sizes"]
        reshaped = inputs["reshaped_input_sizes"]
        full_size = functools.partial(
            processor.image_processor.post_process_masks,
            original_sizes=original,
            reshaped_input_sizes=reshaped,
            binarize=False,
        )
        every = [*include, *exclude]
        xs, ys = torch.tensor([x for x, _ in every]), torch.tensor([y for _, y in every])
        wanted = torch.tensor(labels, dtype=torch.bool)
        agree = []
        for k in range(logits.shape[0]):  # one full-size map at a time (a 4096² image's is 64 MB)
            at_points = full_size([logits[k : k + 1][None]])[0][0, 0][ys.to(device), xs.to(device)].cpu()
            agree.append(((at_points > 0) == wanted).numpy())
        chosen = choose(np.stack(agree), ious, single_first=several)
        soft = full_size([logits[chosen : chosen + 1][None]])[0][0, 0]
        mask = soft.sigmoid_().mul_(255).round_().to(torch.uint8).cpu().numpy()
    keep, drop = point_masks(image.size, include, exclude)
    mask[keep] = 255
    mask[drop] = 0
    low_h, low_w = logits.shape[-2:]
    pad = processor.image_processor.pad_size
    content_h, content_w = (int(v) for v in reshaped[0])
    model_size = (max(1, round(content_w * low_w / pad["width"])), max(1, round(content_h * low_h / pad["height"])))
    names = (["single"] if several else []) + [f"multimask {i}" for i in range(len(ious) - int(several))]
    found = Segmentation(mask, model_size, names[chosen], float(ious[chosen]), bool(agree[chosen].all()))
    log.debug(
        "%d include and %d exclude points: SAM's %s (IoU %.3f), %s",
        len(include),
        len(exclude),
        found.output,
        found.iou,
        "agreeing with every point" if found.agreed else "its points pinned where it disagreed",
    )
    return found


def segment(
    model: Any, processor: Any, image: Image.Image, include: Sequence[Point], exclude: Sequence[Point] = ()
) -> np.ndarray:
    """The soft mask (uint8, the image's height × width) SAM gives for the points: `predict`'s mask."""
    return predict(model, processor, image, include, exclude).mask


def extract(
    model: Any,
    processor: Any,
    image: Image.Image,
    include: Sequence[Point],
    exclude: Sequence[Point] = (),
    erode_size: int = 15,
    foreground_threshold: int = 240,
    background_threshold: int = 15,
    hair: str = "auto",
    only_mask: bool = False,
) -> Image.Image:
    """ExtractContents on one image: what the points pick cut out (RGBA), or with `only_mask` its alpha
    ("L"), both of the image's size, finished by `cutout.finish` with the points pinned after the
    matting too (every include point 255, every exclude point 0, before the input's own alpha)."""
    if hair not in cutout.HAIR_MODES:
        raise errors.GenerationError(f"HairOptimization {hair!r} is none of {', '.join(cutout.HAIR_MODES)}")
    found = predict(model, processor, image, include, exclude)
    keep, drop = point_masks(image.size, [(int(x), int(y)) for x, y in include], [(int(x), int(y)) for x, y in exclude])
    return cutout.finish(
        image,
        found.mask,
        erode_size,
        foreground_threshold,
        background_threshold,
        hair,
        only_mask,
        model_size=found.model_size,
        keep=keep,
        drop=drop,
    )


# -- the pipeline ----------------------------------------------------------------------------------


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """ExtractContents: the spec's image cut out by its points (or the mask), with `on_step` after it and
    `on_preview` with the result, small."""
    assert isinstance(spec, domain_tools.ExtractSpec)
    segmenters = getattr(engine, "point_segmenters", None)
    if segmenters is None:
        raise errors.GenerationError("this worker's engine does no point segmentation (ExtractContents)")
    if spec.image is None:
        raise errors.GenerationError("RawImage: the image is no longer in the store")
    image = reference_images.decode(spec.image, "RawImage")
    model, processor = segmenters.get(spec.model_code)
    on_step(0.0)
    result = extract(
        model,
        processor,
        image,
        tuple(spec.include),
        tuple(spec.exclude),
        erode_size=spec.erode_size,
        foreground_threshold=spec.foreground_threshold,
        background_threshold=spec.background_threshold,
        hair=spec.hair,
        only_mask=spec.only_mask,
    )
    if on_preview is not None:
        on_preview(functools.partial(cutout._preview, result))
    on_step(1.0)
    return Generated([result], [], [""])


pipelines.register(domain_tools.ExtractSpec.kind, run)


# -- what a folder is (`models add`) ----------------------------------------------------------------


def identify(folder: Path) -> ToolFacts:
    """Load `folder` as a point segmenter the way a worker will (on the CPU): kind "segment" with its
    model type, input size, vision width and depth and parameter count; else `problem` says why not.
    Never raises for a bad folder."""
    if not folder.is_dir():
        return ToolFacts(None, problem=f"{folder.name} is no folder: a point segmenter is a transformers SAM folder")
    try:
        model, _processor = load(folder.name, folder)
    except errors.PicserveError as exc:
        return ToolFacts(None, problem=exc.message.replace(f"{_WHAT} {folder.name!r}: ", "", 1))
    vision = model.config.vision_config
    details: dict[str, Any] = {
        "model type": model.config.model_type,
        "input size": int(vision.image_size),
        "vision hidden size": int(vision.hidden_size),
        "vision layers": int(vision.num_hidden_layers),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
    }
    return ToolFacts("segment", details=details)

"""ResizeImage on the worker: upscalers (models/upscale) loaded with spandrel, run tiled at their native
scale, then resampled with Lanczos to exactly the requested size.

spandrel is the loader ComfyUI and chaiNNer use: it reads a `.pth`/`.safetensors` file, detects the
architecture from the state dict (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, OmniSR, SPAN, …) and
gives a descriptor whose call maps a (1, C, H, W) image in [0, 1] to one `scale` times larger. Around it,
this module adds what a service needs:

- `Upscalers`: the models a worker keeps loaded, least recently used dropped first (bounded in bytes),
  reloaded when their file changes, in fp16/bf16 on CUDA where the architecture allows it.
- `upscale_pass`: one pass at the model's scale, in overlapping tiles blended with a feathered ramp, so
  memory stays bounded at any size (one tile's activations at a time; the output accumulates in float32
  on the CPU) and no seam shows. Out of memory, the pass is retried with half the tile, down to 64 px.
- `plan_tile`: the tile side from a per-pixel estimate of the model's activations and the device's free
  memory (the operator's PICSERVE_UPSCALE_TILE wins).
- `run`: the `UpscaleSpec` pipeline (registered in pipelines.PIPELINES): as many passes as cover the
  target (at most 3, sized by `plan_passes`), then Lanczos to Width×Height; progress and previews per
  tile, cancel between tiles, and the A1111 `parameters` text of a generated input carried forward.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.engine import devices, loader, memory, pipelines, toolcache
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback

__all__ = [
    "DEFAULT_BUDGET",
    "MIN_TILE",
    "OVERLAP",
    "TILE_SIZES",
    "Upscalers",
    "activation_bytes_per_pixel",
    "append_fields",
    "compute_dtype",
    "infotext",
    "load_descriptor",
    "plan_passes",
    "plan_tile",
    "resize",
    "run",
    "upscale_pass",
]

log = logging.getLogger(__name__)

#: bytes of upscaler weights kept loaded (a 4× ESRGAN is 67 MB in fp32, a Compact 5 MB, HAT-L 160 MB)
DEFAULT_BUDGET = 1 << 30
#: tile sides tried by `plan_tile`, largest first, in input pixels
TILE_SIZES = (512, 384, 256, 192, 128, 64)
#: the smallest tile an out-of-memory pass is retried with
MIN_TILE = 64
#: input pixels adjacent tiles share (ComfyUI's 32), at most a quarter of the tile
OVERLAP = 32
#: a preview's longest side
PREVIEW_SIDE = 256
#: a tile's share of its activation estimate that must fit the device's free memory (the rest: headroom)
_HEADROOM = 0.5
#: live feature maps per input pixel, in units of the model's feature width: at the input's resolution
#: (a dense block's concatenation, residuals) and at the output's (ESRGAN's upsampling convolutions);
#: RRDB-64 ×4 measured 12–17 KiB per input pixel in fp32 (bench/upscale.py); these give 16 KiB
_MAPS_AT_INPUT, _MAPS_AT_OUTPUT = 16, 3
#: 3-channel images per output pixel of a model that only pixel-shuffles at its end (Compact, SPAN):
#: the shuffle's output, the residual added to it, the clamp
_IMAGES_AT_OUTPUT = 12
#: the input-resolution term for architectures with attention (SwinIR, HAT, DAT, …): window attention
#: holds queries, keys, values and scores per token beside the feature maps
_ATTENTION_FACTOR = 8
#: the least weight a tile gives any pixel, so a pixel's weights never sum to zero
_FLOOR = 1e-3


class Upscalers:
    """The upscalers of models/upscale a worker keeps loaded on its device (engine/toolcache.py).

    Least recently used first out when the loaded weights pass `budget` bytes (default 1 GiB: dozens of
    ESRGAN-size models, a handful of large transformers; the most recent one always stays, whatever its
    size). A model whose file changed (mtime or size) since it was loaded is loaded again. On CUDA a model
    computes in bf16 where the engine's dtype is bf16 and the architecture supports it, else in fp16 where
    the engine computes in half precision and the architecture supports it, else in fp32; on the CPU in fp32.

    Args:
        catalog: where upscaler codes are looked up (kind "upscale").
        device: the engine's device.
        dtype: the engine's compute dtype (the main models').
        tile: the tile side in input pixels (PICSERVE_UPSCALE_TILE); 0: planned from free memory.
        budget: bytes of weights kept loaded.
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: torch.device,
        dtype: torch.dtype,
        tile: int = 0,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.catalog, self.device, self.dtype, self.tile = catalog, torch.device(device), dtype, tile
        self._models = toolcache.ToolModels(catalog, "upscale", "upscaler", self._load, budget, weigh=_nbytes)

    @property
    def budget(self) -> int:
        """Bytes of weights kept loaded."""
        return self._models.budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._models.budget = value

    def loaded(self) -> list[str]:
        """The codes of the upscalers held, least recently used first."""
        return self._models.loaded()

    def get(self, code: str) -> Any:
        """The loaded `spandrel.ImageModelDescriptor` of upscaler `code`, on the device, in its compute dtype.

        Raises ModelLoadError (naming `code` and why) when the file is gone, unreadable, or not an
        image-to-image model spandrel knows.
        """
        return self._models.get(code)

    def _load(self, entry: catalog_module.Entry) -> Any:
        descriptor = load_descriptor(entry.code, entry.path, self.device, self.dtype)
        log.info(
            "upscaler %s loaded: %s ×%d, %.1f MiB, %s on %s",
            entry.code,
            descriptor.architecture.name,
            descriptor.scale,
            _nbytes(descriptor) / 2**20,
            str(descriptor.dtype).removeprefix("torch."),
            self.device,
        )
        return descriptor


def _nbytes(descriptor: Any) -> int:
    """A loaded model's weights and buffers, in bytes."""
    return sum(t.numel() * t.element_size() for t in [*descriptor.model.parameters(), *descriptor.model.buffers()])


def load_descriptor(code: str, path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """spandrel's `ImageModelDescriptor` of the file `path`, on `device` in `compute_dtype`, in eval mode.

    ModelLoadError (naming `code`) for a file spandrel cannot read or does not recognise, a model that is
    not image to image (an inpainting model), a face restorer (it needs aligned 512² faces), or one
    whose images are neither RGB nor grey.
    """
    import spandrel

    descriptor = toolcache.spandrel_load("upscaler", code, path, device)
    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise errors.ModelLoadError(f"upscaler {code}: {path.name} is a {name} model, not image to image")
    if descriptor.purpose == "FaceSR":
        raise errors.ModelLoadError(f"upscaler {code}: {path.name} is a {name} face restorer, not an upscaler")
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        raise errors.ModelLoadError(
            f"upscaler {code}: {path.name} ({name}) maps {descriptor.input_channels} channels to "
            f"{descriptor.output_channels}; only RGB and grey models are run"
        )
    descriptor.to(dtype=compute_dtype(descriptor, device, dtype))
    descriptor.eval()
    return descriptor


def compute_dtype(descriptor: Any, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype an upscaler runs in: half precision only on CUDA, only where spandrel says the
    architecture supports it, and only when the engine itself computes in half precision."""
    if device.type != "cuda":
        return torch.float32
    if dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    if dtype in (torch.float16, torch.bfloat16) and descriptor.supports_half:
        return torch.float16
    return torch.float32


def activation_bytes_per_pixel(descriptor: Any) -> int:
    """A rough, high estimate of the bytes one input pixel of a tile holds while the model runs.

    itemsize × (16·F + 3·F·scale²), F the feature width (the first convolution's output channels): 16
    feature maps at the input's resolution (a dense block's concatenation and the residuals around it)
    and 3 at the output's, where the model upsamples features (nn.Upsample, or pixel shuffles short of
    its scale: ESRGAN, SwinIR, HAT). A model whose one pixel shuffle makes the output image straight from
    input-resolution features (Compact, SPAN, OmniSR) holds images, not features, at the output's
    resolution: 12 channels per output pixel instead of 3·F. The input-resolution term is ×8 where the
    model has attention (a LayerNorm: SwinIR, HAT, DAT, …). RRDB-64 ×4 in fp32: 16 KiB per pixel (4 GiB
    for a 512² tile; 12–17 KiB measured); Compact-64 ×4: 4.8 KiB (0.9–1.6 KiB measured: its convolutions
    run one after another, so the estimate is 3–5× high, on the safe side). `plan_tile` keeps half the
    free memory as headroom besides.
    """
    model = descriptor.model
    modules = list(model.modules())
    first = next((m for m in modules if isinstance(m, torch.nn.Conv2d)), None)
    width = first.out_channels if first is not None else 64
    attention = any(isinstance(m, torch.nn.LayerNorm) for m in modules)
    shuffles = [m for m in modules if isinstance(m, torch.nn.PixelShuffle)]
    upsamples = any(isinstance(m, torch.nn.Upsample) for m in modules)
    shuffles_once = not upsamples and len(shuffles) == 1 and shuffles[0].upscale_factor == descriptor.scale
    at_input = _MAPS_AT_INPUT * width * (_ATTENTION_FACTOR if attention else 1)
    at_output = (_IMAGES_AT_OUTPUT if shuffles_once else _MAPS_AT_OUTPUT * width) * descriptor.scale**2
    itemsize = torch.empty((), dtype=descriptor.dtype).element_size()
    return int(itemsize * (at_input + at_output))


def plan_tile(descriptor: Any, device: torch.device, setting: int = 0) -> int:
    """The tile side in input pixels: `setting` when > 0 (PICSERVE_UPSCALE_TILE), else the largest of
    TILE_SIZES whose activation estimate (`activation_bytes_per_pixel` × side²) takes at most half of
    the device's free memory; MIN_TILE when none does (the out-of-memory retry has the last word).
    An image smaller than the tile runs in one piece (`upscale_pass`)."""
    if setting > 0:
        return _fitted(descriptor, setting)
    free = devices.free_device_memory(device)
    per_pixel = activation_bytes_per_pixel(descriptor)
    side = next((s for s in TILE_SIZES if s * s * per_pixel <= free * _HEADROOM), TILE_SIZES[-1])
    return _fitted(descriptor, side)


def upscale_pass(
    descriptor: Any,
    image: Image.Image,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None],
    device: torch.device,
    on_preview: PreviewCallback | None = None,
) -> Image.Image:
    """`image` (RGB) at the model's scale, in tiles of `tile` input pixels (0: one piece) that share
    `overlap` pixels (at most a quarter of the tile) and are blended with a feathered ramp.

    `on_tile(done, total)` after each tile (it may raise TaskCanceled: the pass stops there); `on_preview`
    after each tile with a function making a ≤256 px preview of the output so far. Out of memory, the pass
    starts again with half the tile (`done` counts from 0 again, with a new `total`), down to MIN_TILE;
    then errors.OutOfMemory.
    """
    return _pass(descriptor, image, tile, overlap, on_tile, device, on_preview)[0]


def _pass(
    descriptor: Any,
    image: Image.Image,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None],
    device: torch.device,
    on_preview: PreviewCallback | None,
) -> tuple[Image.Image, int]:
    """`upscale_pass`, and the tile it succeeded with (the next pass starts there)."""
    source = _to_tensor(image, descriptor.input_channels)
    tile = _fitted(descriptor, tile) if tile > 0 else 0
    while True:
        try:
            with torch.inference_mode():
                return _to_image(_tiled(descriptor, source, tile, overlap, on_tile, on_preview)), tile
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            memory.release(exc, functools.partial(loader.free_memory, device))
            side = tile if 0 < tile < max(image.size) else max(image.size)
            if side <= MIN_TILE:
                where = "the GPU" if device.type == "cuda" else "this worker"
                raise errors.OutOfMemory(
                    f"{where} ran out of memory upscaling a {image.width}x{image.height} image with "
                    f"{descriptor.architecture.name} ×{descriptor.scale}, even in tiles of {side} px: send a "
                    "smaller image, or choose a lighter upscaler"
                ) from None
            smaller = _fitted(descriptor, max(MIN_TILE, side // 2))
            log.warning("upscaling ran out of memory in tiles of %d px: trying %d px", side, smaller)
            tile = smaller


def _fitted(descriptor: Any, side: int) -> int:
    """`side` rounded down to the model's size multiple (SwinIR's windows, …), at least its minimum."""
    need = descriptor.size_requirements
    return max(need.minimum, side // need.multiple_of * need.multiple_of, need.multiple_of)


def _spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Tiles covering [0, length), evenly spaced, adjacent ones sharing at least `overlap` (at most a
    quarter of `tile`); one tile when `tile` is 0 or covers the length.

    The tiles take as many as `tile` needs, each shrunk to the least side (a multiple of `multiple`) that
    covers the length with that many: 1024 px in tiles of 512 sharing 32 are 3 tiles of 363, not 3 of
    512 sharing 256 (half the work, and less memory).
    """
    if tile <= 0 or length <= tile:
        return [(0, length)]
    overlap = min(overlap, tile // 4)
    count = math.ceil((length - overlap) / (tile - overlap))
    side = min(tile, -(-math.ceil((length + (count - 1) * overlap) / count) // multiple) * multiple)
    starts = [round(i * (length - side) / (count - 1)) for i in range(count)]
    return [(start, start + side) for start in starts]


def _ramp(spans: list[tuple[int, int]], index: int, scale: int) -> torch.Tensor:
    """Tile `index`'s blending weight along one axis, per output pixel.

    Where it shares `o` input pixels with a neighbour, the outer quarter (its pixels saw the tile's zero
    padding instead of the neighbour's content) gets no weight, the middle half ramps linearly to 1, and
    the neighbour's ramp is the complement: the two always sum to 1, so an untiled result blends with
    itself unchanged and a tiled one differs only where both tiles' pixels do.
    """
    start, end = spans[index]
    offset = (torch.arange((end - start) * scale, dtype=torch.float32) + 0.5) / scale  # input px from start
    weight = torch.ones_like(offset)
    if index > 0:
        shared = spans[index - 1][1] - start
        weight = torch.minimum(weight, ((offset - shared / 4) / (shared / 2)).clamp(0, 1))
    if index < len(spans) - 1:
        shared = end - spans[index + 1][0]
        weight = torch.minimum(weight, ((end - start - offset - shared / 4) / (shared / 2)).clamp(0, 1))
    return weight.clamp_min(_FLOOR)


def _tiled(
    descriptor: Any,
    source: torch.Tensor,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None],
    on_preview: PreviewCallback | None,
) -> torch.Tensor:
    """The model over `source` (1, C, H, W, float32 on the CPU), tile by tile; float32 on the CPU."""
    scale = descriptor.scale
    _, _, height, width = source.shape
    multiple = descriptor.size_requirements.multiple_of
    rows, columns = _spans(height, tile, overlap, multiple), _spans(width, tile, overlap, multiple)
    total = len(rows) * len(columns)
    if total == 1:
        result = _apply(descriptor, source)
        on_tile(1, 1)
        if on_preview is not None:
            on_preview(functools.partial(_preview, result, None, source))
        return result
    canvas = torch.zeros(1, descriptor.output_channels, height * scale, width * scale)
    weights = torch.zeros(1, 1, height * scale, width * scale)
    done = 0
    for row, (top, bottom) in enumerate(rows):
        vertical = _ramp(rows, row, scale)[:, None]
        for column, (left, right) in enumerate(columns):
            weight = vertical * _ramp(columns, column, scale)[None, :]
            out = _apply(descriptor, source[..., top:bottom, left:right])
            area = (..., slice(top * scale, bottom * scale), slice(left * scale, right * scale))
            canvas[area] += out * weight
            weights[area] += weight
            del out
            done += 1
            on_tile(done, total)
            if on_preview is not None:
                on_preview(functools.partial(_preview, canvas, weights, source))
    return canvas.div_(weights)


def _apply(descriptor: Any, piece: torch.Tensor) -> torch.Tensor:
    """One tile through the model on its device and dtype; the output as float32 on the CPU."""
    out = descriptor(piece.to(device=descriptor.device, dtype=descriptor.dtype))
    return out.to(device="cpu", dtype=torch.float32)


def _preview(canvas: torch.Tensor, weights: torch.Tensor | None, source: torch.Tensor) -> Image.Image:
    """The output so far, at most PREVIEW_SIDE px: tiles done blended, the rest the input resized."""
    height, width = canvas.shape[-2:]
    ratio = min(1.0, PREVIEW_SIDE / max(height, width))
    size = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    shown = F.interpolate(canvas, size=size, mode="area")
    if weights is not None:
        covered = F.interpolate(weights, size=size, mode="area")
        rest = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
        if rest.shape[1] != shown.shape[1]:
            rest = rest.mean(dim=1, keepdim=True).expand_as(shown)
        shown = torch.where(covered > 1e-6, shown / covered.clamp_min(1e-6), rest)
    return _to_image(shown)


def _to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """An RGB image as (1, channels, H, W) float32 in [0, 1] on the CPU (grey for a 1-channel model)."""
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels)
    return (tensor[None] if channels == 1 else tensor.permute(2, 0, 1))[None].contiguous()


def _to_image(tensor: torch.Tensor) -> Image.Image:
    """(1, C, H, W) in [0, 1] → an RGB image (a grey model's output repeated in each channel).

    Works in place on `tensor` (every caller's own: a canvas, a model output, a preview), so a 4096²
    output takes no float32 copies beside its canvas."""
    pixels = tensor[0].clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def plan_passes(source: tuple[int, int], target: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """The input size of each model pass (`domain.upscale_passes` of them: the spec's work counts the same)
    from `source` towards `target`.

    The first pass takes the image as it is, except a side longer than the target's, brought down to the
    target's (the model has nothing to add there). A later pass takes the one before's output brought
    down, side by side, to the least that still covers the target after the passes left
    (⌈target / scale^left⌉): the output never overshoots by more than a pass needs, so memory and time
    follow the requested size (1000×1023 to 4096² with a 4× model: 4000×4092, then 1024² → 4096²,
    not 16000×16368). An extreme change of aspect ratio pays for this on the side that needed little.
    """
    count = domain.upscale_passes(source, target, scale)
    width, height = min(source[0], target[0]), min(source[1], target[1])
    sizes = [(width, height)]
    for left in range(count - 1, 0, -1):
        width = min(width * scale, math.ceil(target[0] / scale**left))
        height = min(height * scale, math.ceil(target[1] / scale**left))
        sizes.append((width, height))
    return sizes


def resize(
    upscalers: Upscalers,
    image: Image.Image,
    width: int,
    height: int,
    model_code: str | None,
    on_step: StepCallback | None = None,
    on_preview: PreviewCallback | None = None,
) -> tuple[Image.Image, str]:
    """`image` at exactly width×height, and the upscaler as the infotext names it.

    No model (`model_code` None), or a target no larger than the image both ways: a Lanczos resample.
    Else the model's passes at its real scale (the loaded model's, not the catalog's guess) until the
    image covers the target both ways (at most domain.UPSCALE_MAX_PASSES; sizes by `plan_passes`), then Lanczos to the
    target. When the aspect ratio changes, the image is stretched to the target (nothing is cropped or
    padded). RGBA keeps its alpha (resized with Lanczos beside the model's RGB); grey images go through
    the model as RGB and come back RGB. `on_step` gets the fraction done after each tile, each pass
    weighted by its output pixels; it reaches 1.0 with the last tile.
    """
    report = on_step or _no_progress
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    rgb = image.convert("RGB")
    size = (width, height)
    if model_code is None or (width <= image.width and height <= image.height):
        result, used = rgb.resize(size, Image.Resampling.LANCZOS), "Lanczos"
        report(1.0)
    else:
        descriptor = upscalers.get(model_code)
        scale = descriptor.scale
        plan = plan_passes(image.size, size, scale)
        work = [w * h * scale**2 for w, h in plan]
        reached = 0.0

        def progress(index: int, done: int, total: int) -> None:
            nonlocal reached
            last = index == len(plan) - 1 and done == total
            fraction = 1.0 if last else (sum(work[:index]) + work[index] * done / total) / sum(work)
            reached = max(reached, min(1.0, fraction))
            report(reached)

        device = upscalers.device
        tile = plan_tile(descriptor, device, upscalers.tile)
        result = rgb
        with torch.inference_mode(), _on_device(device):
            for index, planned in enumerate(plan):
                if result.size != planned:
                    result = result.resize(planned, Image.Resampling.LANCZOS)
                step = functools.partial(progress, index)
                result, tile = _pass(descriptor, result, tile, OVERLAP, step, device, on_preview)
        if result.size != size:
            result = result.resize(size, Image.Resampling.LANCZOS)
        used = f"{model_code} ({descriptor.architecture.name} ×{scale})"
    if alpha is not None:
        result.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
    return result, used


#: fields an earlier upscale left in a `parameters` text (they describe an image that is no longer this one)
_EARLIER_UPSCALE = re.compile(r"(?:^|, )Postprocess upscale(?: to|r): [^,\n]*", re.MULTILINE)
#: a line of A1111 `Key: value` fields (not a prompt)
_FIELDS_LINE = re.compile(r"^\w[\w \-/]*: ")


def infotext(width: int, height: int, upscaler: str, parameters: str | None = None) -> str:
    """A1111's postprocessing fields: `Postprocess upscale to: 4096x4096, Postprocess upscaler: <code>
    (<architecture> ×4)`. A `parameters` text (the input's, e.g. a picserve generation) is kept and the
    fields are appended to its last line as A1111 appends them, so A1111 and its parsers still read the
    generation's parameters; an earlier upscale's fields in it are replaced."""
    line = f"Postprocess upscale to: {width}x{height}, Postprocess upscaler: {upscaler}"
    return append_fields(parameters, line, _EARLIER_UPSCALE)


def append_fields(parameters: str | None, line: str, earlier: re.Pattern[str]) -> str:
    """`line` (A1111 `Key: value` fields) appended to a `parameters` text's last line as A1111 appends its
    postprocessing fields, after what `earlier` matches (an earlier run's same fields) is taken out; a
    prompt's last line gets the fields on a line of their own. No text: `line` alone. (`infotext`, and
    the eraser's, engine/erase.py.)"""
    lines = earlier.sub("", (parameters or "").rstrip()).split("\n")
    lines[-1] = lines[-1].removeprefix(", ")
    if not lines[-1].strip():
        lines.pop()
    if not lines:
        return line
    joiner = ", " if _FIELDS_LINE.match(lines[-1]) else "\n"
    return "\n".join(lines) + joiner + line


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """ResizeImage's pipeline: the spec's image at exactly Width×Height (`resize`), with its infotext."""
    assert isinstance(spec, domain.UpscaleSpec)
    upscalers = getattr(engine, "upscalers", None)
    if upscalers is None:
        raise errors.GenerationError("this worker's engine does no upscaling")
    if spec.image is None:
        raise errors.GenerationError("ResizeImage: the task carries no image")
    image = reference_images.decode(spec.image, "Image")
    parameters = image.info.get("parameters")
    result, used = resize(upscalers, image, spec.width, spec.height, spec.model_code, on_step, on_preview)
    text = infotext(spec.width, spec.height, used, parameters if isinstance(parameters, str) else None)
    return Generated([result], [], [text])


def _on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`device` as the thread's current CUDA device for the block (engine.on_device)."""
    return devices.on_device(device)


def _no_progress(fraction: float) -> None:
    """The step callback when the caller passes none."""


pipelines.register(domain.UpscaleSpec.kind, run)

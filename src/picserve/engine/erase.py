"""RemoveContents on the worker with an eraser (models/inpaint): a LaMa-family model spandrel loads fills
what the mask covers from its surroundings, with no prompt, in one forward pass.

spandrel reads the file, detects the architecture from the state dict and gives a
`MaskedImageModelDescriptor` whose call maps a (1, 3, H, W) image in [0, 1] and a (1, 1, H, W) mask of
0/1 to the filled image (padding to the model's size multiple by itself). Around it, this module adds
what a service needs:

- `Erasers`: the erasers a worker keeps loaded (the two most recently used), reloaded when their file
  changes.
- `erase`: the model runs on a crop around the mask with generous context (LaMa fills from what it sees:
  the whole 4K photo would cost memory and time for pixels far from the object; a tight crop leaves it
  nothing to copy), at most 1024 px on its long side (LaMa was trained at 256–512 px: a larger crop is
  brought down and its fill brought back up with Lanczos). The fill is composited onto the original with
  the mask dilated and feathered by MaskBlur, so the object's fringe goes with it and no seam shows, and
  every pixel outside the feathered mask is the input's, bit for bit.
- `run`: the `EraseSpec` pipeline (registered in pipelines.PIPELINES), with the input's A1111
  `parameters` text carried forward and the eraser's fields appended.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.engine import devices, loader, memory, pipelines, toolcache, upscale
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback

__all__ = [
    "CONTEXT",
    "DILATION",
    "KEEP",
    "MAX_SIDE",
    "Erasers",
    "compute_dtype",
    "crop_box",
    "erase",
    "feather",
    "infotext",
    "load_descriptor",
    "run",
]

log = logging.getLogger(__name__)

#: erasers kept loaded (LaMa: 51M parameters, 200 MB in fp32), least recently used dropped first
KEEP = 2
#: the least context the model sees on each side of the mask's box, in pixels (else the box's own size)
CONTEXT = 128
#: the long side of the crop the model runs at; a larger crop is brought down to it and the fill back up
MAX_SIDE = 1024
#: architectures whose forward takes an FFT of its activations: torch.fft takes no bfloat16 (on CPU or
#: CUDA: "Unsupported dtype BFloat16"), whatever spandrel's `supports_bfloat16` says, so they run in fp32
_FFT_ARCHITECTURES = frozenset({"LaMa"})
#: the mask is dilated by this many MaskBlur radii before it is blurred (`feather`)
DILATION = 2
#: how far PIL's GaussianBlur (three box blurs) reaches, in radii (2.6 measured), beyond a few pixels
_BLUR_REACH = 4


class Erasers:
    """The erasers of models/inpaint a worker keeps loaded on its device (engine/toolcache.py): the `keep`
    most recently used (LaMa is 200 MB; a worker rarely has more than one); a model whose file changed
    (mtime or size) since it was loaded is loaded again. On CUDA a model computes in bf16 where its
    architecture can (`compute_dtype`), else and on the CPU in fp32.

    Args:
        catalog: where eraser codes are looked up (kind "inpaint").
        device: the engine's device.
        keep: how many erasers stay loaded (at least 1).
    """

    def __init__(self, catalog: catalog_module.Catalog, device: torch.device, keep: int = KEEP) -> None:
        self.catalog, self.device = catalog, torch.device(device)
        self._models = toolcache.ToolModels(catalog, "inpaint", "eraser", self._load, max(1, keep))

    def loaded(self) -> list[str]:
        """The codes of the erasers held, least recently used first."""
        return self._models.loaded()

    def get(self, code: str) -> Any:
        """The loaded `spandrel.MaskedImageModelDescriptor` of eraser `code`, on the device, in eval mode.

        Raises ModelLoadError (naming `code` and why) when the file is gone, unreadable, or not an
        inpainting model spandrel knows.
        """
        return self._models.get(code)

    def _load(self, entry: catalog_module.Entry) -> Any:
        descriptor = load_descriptor(entry.code, entry.path, self.device)
        log.info(
            "eraser %s loaded: %s, %s on %s",
            entry.code,
            descriptor.architecture.name,
            str(descriptor.dtype).removeprefix("torch."),
            self.device,
        )
        return descriptor


def load_descriptor(code: str, path: Path, device: torch.device) -> Any:
    """spandrel's `MaskedImageModelDescriptor` of the file `path`, on `device` in `compute_dtype`, in eval
    mode.

    ModelLoadError (naming `code`) for a file spandrel cannot read or does not recognise, a model that is
    not an inpainting model (an upscaler), or one whose images are not RGB.
    """
    import spandrel

    descriptor = toolcache.spandrel_load("eraser", code, path, device)
    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.MaskedImageModelDescriptor):
        raise errors.ModelLoadError(
            f"eraser {code}: {path.name} is a {name} model ({descriptor.purpose}), not an inpainting model"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise errors.ModelLoadError(
            f"eraser {code}: {path.name} ({name}) maps {descriptor.input_channels} channels to "
            f"{descriptor.output_channels}; only RGB inpainting models are run"
        )
    descriptor.to(dtype=compute_dtype(descriptor, device))
    descriptor.eval()
    return descriptor


def compute_dtype(descriptor: Any, device: torch.device) -> torch.dtype:
    """The dtype an eraser runs in: bf16 on CUDA where spandrel says the architecture supports it and its
    forward takes no FFT (LaMa's does: torch.fft has no bf16), else fp32. Never fp16: LaMa's fp16 path
    is unsupported (spandrel: supports_half False), and an eraser is one pass, cheap in fp32."""
    if (
        device.type == "cuda"
        and descriptor.supports_bfloat16
        and descriptor.architecture.name not in _FFT_ARCHITECTURES
    ):
        return torch.bfloat16
    return torch.float32


def crop_box(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The region the model sees around a mask's bounding `box` (left, top, right, bottom) in an image of
    `size`: the box grown on each side by its own width (left and right) or height (top and bottom), at
    least CONTEXT px, clamped to the image."""
    left, top, right, bottom = box
    grow_x, grow_y = max(right - left, CONTEXT), max(bottom - top, CONTEXT)
    width, height = size
    return max(0, left - grow_x), max(0, top - grow_y), min(width, right + grow_x), min(height, bottom + grow_y)


def feather(binary: Image.Image, mask_blur: int) -> tuple[Image.Image, Image.Image]:
    """The mask the model fills and the one its fill is composited with, from a binary mask (L, 0/255).

    The second is `binary` dilated by DILATION × `mask_blur` px (a square), under a Gaussian blur of
    radius `mask_blur`: the object's fringe, which a drawn mask rarely covers, is replaced (at the drawn
    edge the blur leaves 250/255 of the fill; a dilation of one radius would leave 215, a visible fringe)
    and the fill fades into the original. The first is everywhere that blurred mask is above 0: the fill
    under the whole fade is the model's, so the fade shows no edge of it. `mask_blur` 0: both are
    `binary` (a hard edge). Both are worked out only around the mask, so a large image costs no more.
    """
    if mask_blur <= 0 or binary.getbbox() is None:
        return binary, binary
    box = binary.getbbox()
    assert box is not None
    grow = DILATION * mask_blur
    margin = grow + _BLUR_REACH * mask_blur + 4
    region = (
        max(0, box[0] - margin),
        max(0, box[1] - margin),
        min(binary.width, box[2] + margin),
        min(binary.height, box[3] + margin),
    )
    part = torch.from_numpy(np.asarray(binary.crop(region), dtype=np.float32))[None, None]
    side = 2 * grow + 1  # separable max pools: a square dilation, O(side) per pixel
    part = F.max_pool2d(part, (1, side), stride=1, padding=(0, grow))
    part = F.max_pool2d(part, (side, 1), stride=1, padding=(grow, 0))
    blurred = Image.fromarray(part[0, 0].numpy().astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(mask_blur))
    soft = Image.new("L", binary.size, 0)
    soft.paste(blurred, region[:2])
    return soft.point(lambda v: 255 if v > 0 else 0), soft


def erase(
    descriptor: Any,
    image: Image.Image,
    mask: Image.Image,
    mask_blur: int,
    on_step: StepCallback | None = None,
) -> Image.Image:
    """`image` with what `mask` (L, the image's size, white = erase; > 127 counts) covers filled by the
    eraser, composited with the mask dilated and feathered by `mask_blur` px (`feather`).

    Pixels where the feathered mask is 0 are the input's, bit for bit; a mask that marks nothing gives the
    image back unchanged. The result is RGB, or RGBA with the input's alpha unchanged for an image with
    alpha (RGBA, LA); grey and other modes come back RGB. `on_step` gets 0.0 before the model and 1.0
    after (it may raise TaskCanceled).
    """
    report = on_step or _no_progress
    if mask.size != image.size:
        raise errors.GenerationError(f"the mask is {mask.width}x{mask.height}, the image {image.width}x{image.height}")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    rgb = image.convert("RGB")
    binary = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
    filled, soft = feather(binary, mask_blur)
    box = filled.getbbox()
    report(0.0)
    if box is None:
        result = rgb
    else:
        region = crop_box(box, image.size)
        crop, crop_mask = rgb.crop(region), filled.crop(region)
        fill = _inpaint(descriptor, crop, crop_mask)
        # outside the filled mask the crop's own pixels, exactly (not the model's resampled copy of them)
        patched = rgb.copy()
        patched.paste(Image.composite(fill, crop, crop_mask), region[:2])
        result = Image.composite(patched, rgb, soft)
    report(1.0)
    if alpha is not None:
        result.putalpha(alpha)
    return result


def _inpaint(descriptor: Any, crop: Image.Image, mask: Image.Image) -> Image.Image:
    """The model's fill of `crop` (RGB) where `mask` (L, 0/255) is set, at the crop's size: a crop longer
    than MAX_SIDE is brought down (the mask with any covered pixel counting) and the fill back up."""
    size = crop.size
    scale = MAX_SIDE / max(size)
    if scale < 1:
        small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        crop = crop.resize(small, Image.Resampling.LANCZOS)
        mask = mask.resize(small, Image.Resampling.BOX).point(lambda v: 255 if v > 0 else 0)
    device, dtype = descriptor.device, descriptor.dtype
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    holes = torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None, None]
    doing = (
        f"erasing a {crop.width}x{crop.height} region with {descriptor.architecture.name}: erase a smaller area "
        "at a time"
    )
    free = functools.partial(loader.free_memory, device)
    with memory.tool_run(device, doing, free), torch.inference_mode(), devices.on_device(device):
        output = descriptor(pixels.to(device, dtype), holes.to(device, dtype))
        output = output.float().clamp_(0, 1).mul_(255).round_().to("cpu", torch.uint8)
    fill = Image.fromarray(output[0].permute(1, 2, 0).contiguous().numpy(), "RGB")
    return fill if fill.size == size else fill.resize(size, Image.Resampling.LANCZOS)


#: the fields an earlier erase left in a `parameters` text (replaced by this one's)
_EARLIER_ERASE = re.compile(r"(?:^|, )Postprocess erase: [^,\n]*(?:, Postprocess erase mask blur: \d+)?", re.MULTILINE)


def infotext(eraser: str, mask_blur: int, parameters: str | None = None) -> str:
    """A1111-style postprocessing fields: `Postprocess erase: <code> (LaMa), Postprocess erase mask blur: 12`
    (not A1111's `Mask blur`, which the input's own inpainting may hold), appended to the input's
    `parameters` text (e.g. a picserve generation's) as upscale.infotext appends its own, an earlier
    erase's fields replaced."""
    return upscale.append_fields(
        parameters, f"Postprocess erase: {eraser}, Postprocess erase mask blur: {mask_blur}", _EARLIER_ERASE
    )


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """RemoveContents' eraser pipeline: the spec's image with what its mask covers erased (`erase`), with
    its infotext."""
    assert isinstance(spec, domain.EraseSpec)
    erasers = getattr(engine, "erasers", None)
    if erasers is None:
        raise errors.GenerationError("this worker's engine has no erasers")
    if spec.image is None or spec.mask is None:
        raise errors.GenerationError("RemoveContents: the task carries no image or no mask")
    image = reference_images.decode(spec.image, "RawImage")
    mask = reference_images.mask_for(
        reference_images.decode(spec.mask, "Mask"), image.width, image.height, "JustResize"
    )
    if spec.invert_mask:
        mask = mask.point(lambda v: 255 - v)
    parameters = image.info.get("parameters")
    descriptor = erasers.get(spec.model_code)
    result = erase(descriptor, image, mask, spec.mask_blur, on_step)
    used = f"{spec.model_code} ({descriptor.architecture.name})"
    return Generated(
        [result], [], [infotext(used, spec.mask_blur, parameters if isinstance(parameters, str) else None)]
    )


def _no_progress(fraction: float) -> None:
    """The step callback when the caller passes none."""


pipelines.register(domain.EraseSpec.kind, run)

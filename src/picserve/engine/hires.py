"""Hires fix (A1111's `enable_hr`, AI Horde's `hires_fix`): an image larger than the model's native size
in two passes, so that its subjects are not repeated across the canvas.

1. The batch is generated at the first-pass size (`domain.Hires.width`×`height`, near SDXL's native
   area; specs/generation.first_pass_size).
2. Each image is brought to the spec's width×height: its latents upscaled (bilinear, A1111's
   "Latent"), or the decoded image resampled (Lanczos) or run through an upscaler of models/upscale
   (engine/upscale.py, tiled).
3. Each is denoised again at width×height by img2img: `Hires.steps` steps at `Hires.strength` (so
   int(steps × strength) run), seeded as the first pass (image i: seed + i).

Everything else of the spec applies to both passes: LoRAs and embeddings, ControlNet units (their maps
made at each pass's size), tiling, previews. The progress runs over both passes, weighted by their
work (pixels × steps run), and a cancel stops between them as between steps. Whatever runs out of
memory is the larger pass, which the admission check sized (specs/generation.largest_pass).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from picserve import domain
from picserve.engine import infotext, upscale
from picserve.engine.base import Generated, PassInput, PreviewCallback, StepCallback

__all__ = ["Denoise", "generate", "upscale_latents"]

#: one denoising pass of a spec from a PassInput (Engine.denoise)
Denoise = Callable[[domain.GenerationSpec, StepCallback, PreviewCallback | None, PassInput], Generated]


def generate(
    denoise: Denoise,
    upscalers: upscale.Upscalers,
    spec: domain.GenerationSpec,
    on_step: StepCallback,
    on_preview: PreviewCallback | None,
) -> Generated:
    """`spec`'s images by hires fix (its `hires` is set), with their seeds and infotexts: its passes by
    `denoise` (the engine's), an upscaler model's by `upscalers`."""
    fix = spec.hires
    assert fix is not None and spec.mode == "txt2img", "hires fix is text-to-image only (specs/generation.py)"
    first = spec.evolve(width=fix.width, height=fix.height, hires=None, return_control_maps=False)
    second_steps = max(1, int(fix.steps * fix.strength))
    first_work, second_work = fix.width * fix.height * spec.steps, spec.width * spec.height * second_steps
    share = first_work / (first_work + second_work)

    latent = fix.upscaler == "Latent"
    made = denoise(
        first, _part(on_step, 0.0, share), on_preview, PassInput("txt2img", output="latent" if latent else "image")
    )
    images: list[Image.Image] = []
    maps: list[Image.Image] = []
    infotexts: list[str] = []
    count = len(made.seeds)
    for i, seed in enumerate(made.seeds):
        # each image's second pass: its own seed, one image (its input differs from the others')
        done = share + (1 - share) * i / count
        step = _part(on_step, done, (1 - share) / count)
        step(0.0)  # a cancel stops here, between the passes
        if latent:
            source = PassInput("img2img", latents=upscale_latents(made.latents[i], spec.width, spec.height))
        else:
            source = PassInput("img2img", image=_upscaled(upscalers, made.images[i], spec, fix.upscaler))
        second = spec.evolve(hires=None, batch_size=1, seed=seed, steps=fix.steps, strength=fix.strength)
        out = denoise(second, step, on_preview, source)
        images.append(out.images[0])
        # ReturnControlMaps: the second pass's maps at width×height (every image's pass makes the same ones)
        maps = out.images[1:]
        infotexts.append(infotext.of(spec, seed))
    on_step(1.0)
    map_texts = [f"ControlNet {i}: control map" for i in range(len(maps))]
    return Generated(images + maps, made.seeds, infotexts + map_texts)


def upscale_latents(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """`latents` (1, 4, h, w) brought to the latents of width×height (their multiples of 8), bilinear:
    A1111's "Latent" upscaler."""
    size = (-(-height // 8), -(-width // 8))
    return F.interpolate(latents.float(), size=size, mode="bilinear", align_corners=False).to(latents.dtype)


def _upscaled(
    upscalers: upscale.Upscalers, image: Image.Image, spec: domain.GenerationSpec, upscaler: str
) -> Image.Image:
    """The first pass's `image` at the spec's size: Lanczos, or an upscaler of models/upscale."""
    code = None if upscaler == "Lanczos" else upscaler
    result, _ = upscale.resize(upscalers, image, spec.width, spec.height, code)
    return result


def _part(on_step: StepCallback, start: float, span: float) -> Callable[[float], None]:
    """A pass's progress (0..1) as its part [start, start + span] of the whole."""

    def report(progress: float) -> None:
        on_step(start + span * progress)

    return report

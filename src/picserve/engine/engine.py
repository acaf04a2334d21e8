"""Engine.generate: one validated GenerationSpec in, images and their seeds out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from picserve import __version__, catalog as catalog_module, domain, errors
from picserve.engine import images, loader, samplers

__all__ = ["Engine", "Generated", "StepCallback"]

#: called after every denoising step with (steps done, steps in total); may raise TaskCanceled
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Generated:
    images: list[Image.Image]
    seeds: list[int]
    #: A1111 `parameters` text per image
    infotexts: list[str]

    def pngs(self) -> list[bytes]:
        return [images.to_png(img, text) for img, text in zip(self.images, self.infotexts)]


class Engine:
    """Runs SDXL generations on one device. Not thread-safe: one worker drives one engine."""

    def __init__(self, catalog: catalog_module.Catalog, device: str = "auto", max_loaded: int = 1,
                 cache_dir: Path | None = None, max_chunk: int = 4):
        self.pipelines = loader.PipelineCache(catalog, device, max_loaded, cache_dir)
        #: images denoised together; larger batches run in chunks of this size to bound memory
        self.max_chunk = max_chunk

    @property
    def loaded_models(self) -> list[str]:
        return self.pipelines.loaded

    def generate(self, spec: domain.GenerationSpec, on_step: StepCallback | None = None) -> Generated:
        # 1. The cached pipeline and a fresh scheduler for this request's sampler.
        pipe = self.pipelines.get(spec.model_code)
        pipe.scheduler = samplers.make_scheduler(spec.sampler, pipe.picserve_scheduler_config, spec.seed)
        _check_clip_skip(pipe, spec.clip_skip)

        # 2. SDXL works on multiples of 8 px: generate at the next one, resize to the exact request.
        width, height = _ceil8(spec.width), _ceil8(spec.height)

        # 3. Denoise in chunks; image i always uses seed + i, on a CPU generator so seeds match across devices.
        total_steps = spec.steps * math.ceil(spec.batch_size / self.max_chunk)
        done = 0

        def step_end(_pipe, step_index, _timestep, kwargs):
            if on_step is not None:
                on_step(done + step_index + 1, total_steps)
            return kwargs

        results: list[Image.Image] = []
        seeds = spec.seeds
        with torch.inference_mode():
            for start in range(0, len(seeds), self.max_chunk):
                chunk = seeds[start:start + self.max_chunk]
                output = pipe(
                    prompt=spec.prompt,
                    negative_prompt=spec.negative_prompt or None,
                    num_images_per_prompt=len(chunk),
                    generator=[torch.Generator("cpu").manual_seed(s) for s in chunk],
                    width=width,
                    height=height,
                    num_inference_steps=spec.steps,
                    guidance_scale=spec.cfg_scale,
                    clip_skip=spec.clip_skip - 1 or None,  # A1111 ClipSkip 1 = diffusers' default (penultimate)
                    callback_on_step_end=step_end,
                )
                results.extend(output.images)
                done += spec.steps

        # 4. Exact size and A1111 metadata.
        if (width, height) != (spec.width, spec.height):
            results = [img.resize((spec.width, spec.height), Image.Resampling.LANCZOS) for img in results]
        texts = [_infotext(spec, seed) for seed in seeds]
        return Generated(images=results, seeds=seeds, infotexts=texts)


def _ceil8(n: int) -> int:
    return (n + 7) // 8 * 8


def _check_clip_skip(pipe, clip_skip: int) -> None:
    # diffusers reads hidden_states[-(clip_skip + 2)]; beyond the encoder's depth it raises IndexError.
    layers = pipe.text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise errors.GenerationError(
            f"InferenceParams.ClipSkip {clip_skip} is deeper than this model's text encoder (1..{layers})"
        )


def _infotext(spec: domain.GenerationSpec, seed: int) -> str:
    fields = {
        "Steps": spec.steps, "Sampler": spec.sampler, "CFG scale": f"{spec.cfg_scale:g}", "Seed": seed,
        "Size": f"{spec.width}x{spec.height}", "Model": spec.model_code,
        "Clip skip": spec.clip_skip if spec.clip_skip > 1 else None, "Tiling": "True" if spec.tiling else None,
        "Version": f"picserve {__version__}",
    }
    if spec.original_prompt and spec.original_prompt != spec.prompt:
        fields["Original prompt"] = repr(spec.original_prompt)
    return images.infotext(spec.prompt, spec.negative_prompt, fields)

"""Engine.generate: one validated GenerationSpec in, images and their seeds out."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from picserve import __version__, domain, reference_images
from picserve import catalog as catalog_module
from picserve.engine import adapters, loader, memory, png, previews, prompts, samplers, tiling
from picserve.engine.base import Generated, PreviewCallback, StepCallback

__all__ = ["Engine", "Generated", "StepCallback"]

#: above this many output pixels the VAE decodes in tiles, keeping its memory bounded
_TILED_VAE_PIXELS = 1280 * 1280


class Engine:
    """SDXL generations on one device (a `base.GenerationEngine`), one at a time.

    A generation changes the shared pipeline while it runs (its scheduler, the LoRAs, embeddings and
    hypernetworks applied, seamless tiling, VAE tiling), so two at once on one engine would corrupt each
    other. The worker drives an engine from a single thread; `generate` also holds a lock for the whole
    generation as a backstop, so a second caller waits instead.

    Args:
        catalog: the models folder the model codes of requests are looked up in.
        device: ``"auto"`` (CUDA when available, else CPU), or a torch device name such as ``"cuda:1"``.
        max_loaded: main models kept loaded at once, least recently used unloaded first (at least 1).
        cache_dir: where generated config folders (SDXL base configs for single-file checkpoints) are
            written; ``~/.cache/picserve`` when None.
        max_chunk: images denoised together; a larger batch runs in chunks of this size to bound memory.
            A chunk that runs out of memory is retried once, one image at a time (see memory.py).
        max_loras: LoRAs kept loaded per main model between requests, least recently used evicted first.
        max_cached_files: sub-model files (LoRA, embedding, hypernetwork) whose contents stay in memory,
            least recently used dropped first.
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: str = "auto",
        max_loaded: int = 1,
        cache_dir: Path | None = None,
        max_chunk: int = 4,
        max_loras: int = 8,
        max_cached_files: int = 16,
    ) -> None:
        self.pipelines = loader.PipelineCache(catalog, device, max_loaded, cache_dir)
        self.adapters = adapters.Adapters(catalog, max_loras=max_loras, max_cached_files=max_cached_files)
        #: images denoised together; larger batches run in chunks of this size to bound memory
        self.max_chunk = max(1, max_chunk)
        #: held for a whole generation: one at a time per engine (see the class docstring)
        self._generating = threading.Lock()

    def holdings(self) -> dict[str, list[str]]:
        """Main models and LoRAs in memory: a hint for sending jobs to the worker that already has them."""
        models = self.pipelines.models()
        return {
            "main": [m.code for m in models],
            "lora": [name for m in models for name in [*m.loras, *self.adapters.patched(m)]],
        }

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        """Images for `spec`, which the API has checked against the model (`to_spec`).

        `on_step` is called after every denoising step, and also once the model is loaded and before
        each chunk of the batch, so that a cancel (it raises TaskCanceled) stops before more work.

        Raises `errors.ModelLoadError` when the main model's or a sub-model's file cannot be read or
        applied (the loaded models are left as they were), and `errors.OutOfMemory` when the device
        runs out of memory, even one image at a time (memory is freed; the next generation can run).
        """
        with self._generating, memory.as_error(spec, self.pipelines.device.type, self._free_memory):
            return self._generate(spec, on_step or _no_progress, on_preview)

    def _free_memory(self) -> None:
        """Room for a retry: the other main models leave memory, then the allocator's cache is emptied."""
        self.pipelines.unload_all(keep=self.pipelines.loaded[-1:])  # the model of this request stays
        loader.free_memory(self.pipelines.device)

    def _generate(
        self, spec: domain.GenerationSpec, on_step: StepCallback, on_preview: PreviewCallback | None
    ) -> Generated:
        # 1. The pipeline for the mode (txt2img, img2img, inpaint share one loaded model) and a fresh scheduler.
        #    Loading can take long: a cancel that came meanwhile stops here. The API has checked the model
        #    against the request (to_spec): an inpainting model gets a mask, ClipSkip is within its encoder.
        model = self.pipelines.get(spec.model_code)
        on_step(0.0)
        assert not model.is_inpaint or spec.mode == "inpaint", f"{spec.model_code!r} is an inpainting model: no mask"
        pipe = model.pipeline(spec.mode)
        pipe.scheduler = samplers.make_scheduler(spec.sampler, model.scheduler_config, spec.seed)
        _assert_clip_skip_fits(pipe, spec.clip_skip)

        # 2. SDXL works on multiples of 8 px: generate at the next one, resize to the exact request at the end.
        width, height = _ceil8(spec.width), _ceil8(spec.height)

        # 3. What the mode's pipeline takes besides the prompt: a size, or a reference image (and its mask)
        #    brought to the requested size by the request's resize mode, then to the multiple of 8.
        reference: Image.Image | None = None
        mask: Image.Image | None = None
        mode_inputs: dict[str, object]
        if spec.mode == "txt2img":
            mode_inputs = {"width": width, "height": height}
        elif spec.mode == "img2img":
            reference = _reference(spec)
            mode_inputs = {"image": _resized(reference, width, height), "strength": spec.strength}
        else:  # inpaint
            reference = _reference(spec)
            assert spec.mask_image is not None  # mode "inpaint" means a mask was sent
            mask = reference_images.mask_for(
                reference_images.decode(spec.mask_image, "mask"), spec.width, spec.height, spec.resize_mode
            )
            mode_inputs = {
                "image": _resized(reference, width, height),
                "mask_image": _resized(mask, width, height),
                "strength": spec.strength,
                "width": width,
                "height": height,
            }

        seeds = spec.seeds
        tile_vae = width * height > _TILED_VAE_PIXELS and not spec.tiling  # tiled decoding would break the seams
        # 4. LoRAs, embeddings and hypernetworks for this request only; the model is restored afterwards.
        with self.adapters.applied(model, spec.sub_models), torch.inference_mode():
            # 5. Prompt embeddings with A1111 weighting, long prompts in 75-token chunks, clip skip.
            conditioning = prompts.encode(pipe, spec.prompt, spec.negative_prompt, spec.clip_skip, spec.cfg_scale > 1)

            # 6. Denoise in chunks of the batch; image i uses seed + i, from a CPU generator (same on any device).
            #    A chunk that runs out of memory is retried one image at a time (memory.run_in_chunks).
            def denoise(chunk_seeds: list[int], on_chunk_step: Callable[[float], None]) -> list[Image.Image]:
                def step_end(step_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                    on_chunk_step((step + 1) / max(1, step_pipe.num_timesteps))
                    if on_preview is not None:
                        latents = kwargs["latents"]
                        on_preview(lambda: previews.latents_to_image(latents))
                    return kwargs

                output = pipe(
                    prompt_embeds=conditioning.embeds,
                    pooled_prompt_embeds=conditioning.pooled,
                    negative_prompt_embeds=conditioning.negative_embeds,
                    negative_pooled_prompt_embeds=conditioning.negative_pooled,
                    num_images_per_prompt=len(chunk_seeds),
                    generator=[torch.Generator("cpu").manual_seed(s) for s in chunk_seeds],
                    num_inference_steps=spec.steps,
                    guidance_scale=spec.cfg_scale,
                    callback_on_step_end=step_end,
                    **mode_inputs,
                )
                images: list[Image.Image] = output.images
                return images

            with tiling.seamless(pipe, spec.tiling), tiling.tiled_vae(pipe, tile_vae):
                results = memory.run_in_chunks(seeds, self.max_chunk, denoise, on_step, self._free_memory)

        # 7. Exact size; inpainting keeps every pixel outside the mask exactly; A1111 metadata.
        if results[0].size != (spec.width, spec.height):
            results = [img.resize((spec.width, spec.height), Image.Resampling.LANCZOS) for img in results]
        if mask is not None and reference is not None:
            results = [Image.composite(img, reference, mask) for img in results]
        return Generated(images=results, seeds=seeds, infotexts=[_infotext(spec, s) for s in seeds])


def _reference(spec: domain.GenerationSpec) -> Image.Image:
    """The request's reference image at exactly the requested size, by its resize mode."""
    assert spec.init_image is not None  # img2img and inpaint always carry one
    image = reference_images.decode(spec.init_image, "image")
    return reference_images.fit(image, spec.width, spec.height, spec.resize_mode)


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _ceil8(n: int) -> int:
    return (n + 7) // 8 * 8


def _no_progress(progress: float) -> None:
    """The step callback when the caller passes none."""


def _assert_clip_skip_fits(pipe: Any, clip_skip: int) -> None:
    # ClipSkip n reads hidden_states[-(n + 1)]: at most as deep as the encoder's layer count. The API
    # refuses a deeper one before queueing (to_spec, from the model file's header).
    layers = pipe.text_encoder.config.num_hidden_layers
    assert clip_skip <= layers, f"ClipSkip {clip_skip} is deeper than this model's text encoder (1..{layers})"


def _listed(spec: domain.GenerationSpec, kind: str, weighted: bool) -> str | None:
    items = [f"{s.code}:{s.weight:g}" if weighted else s.code for s in spec.sub_models if s.kind == kind]
    return ", ".join(items) or None


def _infotext(spec: domain.GenerationSpec, seed: int) -> str:
    fields = {
        "Steps": spec.steps,
        "Sampler": spec.sampler,
        "CFG scale": f"{spec.cfg_scale:g}",
        "Seed": seed,
        "Size": f"{spec.width}x{spec.height}",
        "Model": spec.model_code,
        "Denoising strength": f"{spec.strength:g}" if spec.init_image else None,
        "Mask": "True" if spec.mask_image else None,
        "Clip skip": spec.clip_skip if spec.clip_skip > 1 else None,
        "Tiling": "True" if spec.tiling else None,
        "LoRA": _listed(spec, "lora", weighted=True),
        "Hypernetwork": _listed(spec, "hypernetwork", weighted=True),
        "Embeddings": _listed(spec, "embedding", weighted=False),
        "Version": f"picserve {__version__}",
    }
    if spec.original_prompt and spec.original_prompt != spec.prompt:
        fields["Original prompt"] = repr(spec.original_prompt)
    if spec.original_negative_prompt and spec.original_negative_prompt != spec.negative_prompt:
        fields["Original negative prompt"] = repr(spec.original_negative_prompt)
    return png.infotext(spec.prompt, spec.negative_prompt, fields)

"""Engine.generate: one validated GenerationSpec in, images and their seeds out."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from picserve import admission, domain, errors, reference_images
from picserve import catalog as catalog_module
from picserve.engine import (
    acceleration,
    adapters,
    canvas,
    controlnet,
    cutout,
    describe,
    erase,
    faces,
    hires,
    infotext,
    ipadapter,
    loader,
    memory,
    precision,
    preprocess,
    previews,
    prompts,
    samplers,
    segment,
    tiling,
    upscale,
)
from picserve.engine.base import Capacity, Generated, PassInput, PreviewCallback, StepCallback
from picserve.engine.devices import device_memory, free_device_memory, on_device

__all__ = ["Engine", "Generated", "PassInput", "StepCallback", "device_memory", "free_device_memory", "on_device"]

log = logging.getLogger(__name__)


class Engine:
    """SDXL generations on one device (a `base.GenerationEngine`), one at a time.

    A generation changes the shared pipeline while it runs (its scheduler, the LoRAs, embeddings and
    hypernetworks applied, seamless tiling, VAE tiling), so two at once on one engine would corrupt each
    other. The worker drives an engine from a single thread; `generate` also holds a lock for the whole
    generation as a backstop, so a second caller waits instead.

    Args:
        catalog: the models folder the model codes of requests are looked up in.
        device: ``"auto"`` (CUDA when available, else CPU), or a torch device name such as ``"cuda:1"``.
        max_loaded: main models kept on the device at once (0: as many as `memory_budget` holds).
        memory_budget: bytes of main-model weights kept on the device (None: no bound); the least
            recently used leave it first (loader.PipelineCache).
        host_budget: bytes of main models kept in CPU RAM once they left the device, to come back
            faster than from disk (0: none).
        cache_dir: where generated config folders (SDXL base configs for single-file checkpoints) are
            written; ``~/.cache/picserve`` when None.
        max_chunk: images denoised together at most; each generation is planned (admission.plan) to the
            largest chunk whose estimated memory fits what the device has free, with the VAE decode
            sliced or tiled when needed. A chunk that runs out of memory all the same is retried once,
            one image at a time (see memory.py).
        max_loras: LoRAs kept loaded per main model between requests, least recently used evicted first.
        max_cached_files: sub-model files (LoRA, embedding, hypernetwork) whose contents stay in memory,
            least recently used dropped first.
        speed: the speed switches (channels_last, fused QKV, a compiled UNet with LoRA hot-swap slots)
            applied to each main model as it is loaded; None: all off (acceleration.py).
        dtype: the compute dtype (PICSERVE_DTYPE): "auto" or None (fp16 on CUDA, fp32 on the CPU),
            "float16", "bfloat16", "float32", or a torch dtype (loader.resolve_dtype).
        upscale_tile: an upscaler's tile side in input pixels (PICSERVE_UPSCALE_TILE); 0: planned from
            the device's free memory (engine/upscale.py).
        controlnet_memory: bytes of control models kept on the device (PICSERVE_CONTROLNET_MEMORY; None:
            no bound); the least recently used that a request does not use leave first.
        translation_models: the translation models folder (settings.translation_dir), where
            DescribeImages finds its English→X models; None: its texts are in English only.
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: str = "auto",
        max_loaded: int = 0,
        cache_dir: Path | None = None,
        max_chunk: int = 4,
        max_loras: int = 8,
        max_cached_files: int = 16,
        memory_budget: int | None = None,
        host_budget: int = 0,
        speed: acceleration.Acceleration | None = None,
        dtype: str | torch.dtype | None = None,
        upscale_tile: int = 0,
        controlnet_memory: int | None = None,
        translation_models: Path | None = None,
    ) -> None:
        #: the speed switches applied to every main model loaded (acceleration.py); None: all off
        self.speed = speed
        prepare = None if speed is None else functools.partial(acceleration.prepare, options=speed)
        self.pipelines = loader.PipelineCache(
            catalog, device, max_loaded, cache_dir, memory_budget, host_budget, prepare=prepare, dtype=dtype
        )
        self.adapters = adapters.Adapters(catalog, max_loras=max_loras, max_cached_files=max_cached_files)
        #: images denoised together; larger batches run in chunks of this size to bound memory
        self.max_chunk = max(1, max_chunk)
        #: ResizeImage's upscalers and RemoveBackground's segmentation models, each in its own cache
        self.upscalers = upscale.Upscalers(catalog, self.pipelines.device, self.pipelines.dtype, tile=upscale_tile)
        self.segmenters = cutout.Segmenters(catalog, self.pipelines.device)
        #: RemoveContents' erasers (models/inpaint)
        self.erasers = erase.Erasers(catalog, self.pipelines.device)
        #: ControlNets (held beside the main models, by bytes) and the preprocessors making their maps
        self.controlnets = controlnet.ControlNets(
            catalog, self.pipelines.device, self.pipelines.dtype, controlnet_memory
        )
        self.preprocessors = preprocess.Preprocessors(catalog.models_dir, self.pipelines.device)
        #: IP-Adapters and their image encoders (ControlNetList units whose model is an IP-Adapter)
        self.ipadapters = ipadapter.IPAdapters()
        #: RestoreFaces' (and FaceRestore's) detectors and restorers, ExtractContents' point segmenters,
        #: DescribeImages' captioners and taggers with the English→X translator of their texts
        self.faces = faces.FaceModels(catalog, self.pipelines.device, self.pipelines.dtype)
        self.point_segmenters = segment.PointSegmenters(catalog, self.pipelines.device, self.pipelines.dtype)
        self.describers = describe.Describers(
            catalog, self.pipelines.device, self.pipelines.dtype, translation_models=translation_models
        )
        #: held for a whole generation: one at a time per engine (see the class docstring)
        self._generating = threading.Lock()

    def holdings(self) -> dict[str, list[str]]:
        """Main models and LoRAs on the device, and main models in the RAM tier: a hint for sending jobs
        to the worker that already has them."""
        models = self.pipelines.models()
        return {
            "main": [m.code for m in models],
            "lora": [name for m in models for name in [*m.loras, *self.adapters.patched(m)]],
            "host": self.pipelines.on_host,
            "upscale": self.upscalers.loaded(),
            "background": self.segmenters.loaded(),
            "inpaint": self.erasers.loaded(),
            **self.faces.loaded(),
            "segment": self.point_segmenters.loaded(),
            "caption": self.describers.loaded(),
            # control models: ControlNets and IP-Adapters (by ModelCode, their file's name)
            "controlnet": [*self.controlnets.loaded(), *(Path(p).stem for p in self.ipadapters.loaded("adapter"))],
        }

    def capacity(self) -> Capacity:
        """The device's memory and what the main models take of it (for the registry and its routing)."""
        device_bytes, host_bytes = self.pipelines.used()
        models = self.pipelines.models()
        largest = max((m.nbytes for m in models), default=0)
        slots = self.pipelines.max_loaded  # 0: no count cap
        if self.pipelines.memory_budget is not None and largest:
            by_bytes = max(1, self.pipelines.memory_budget // largest)
            slots = min(slots, by_bytes) if slots else by_bytes
        elif not slots:  # unbounded, or no model measured yet: one more model evicts nothing
            slots = len(models) + 1
        return Capacity(
            device_total=device_memory(self.pipelines.device),
            model_budget=self.pipelines.memory_budget,
            model_bytes=device_bytes,
            host_bytes=host_bytes,
            model_slots=max(1, slots),
            dtype=str(self.pipelines.dtype).removeprefix("torch."),
        )

    def preload(self, codes: list[str]) -> None:
        """Load the main models `codes` onto the device before any job (`picserve worker --preload`), the
        last one most recently used, and compile their UNets for the compile sizes when compile is on
        (acceleration.warm_up), so that no request pays for it. Raises ModelLoadError/OutOfMemory as a
        generation would."""
        with self._generating, on_device(self.pipelines.device):
            for code in codes:
                model = self.pipelines.get(code)
                if seconds := acceleration.warm_up(model.base):
                    log.info("main model %s compiled for %d sizes in %.1f s", code, len(seconds), sum(seconds.values()))

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
        with (
            self._generating,
            on_device(self.pipelines.device),
            memory.as_error(spec, self.pipelines.device.type, self._free_memory),
        ):
            on_step = on_step or _no_progress
            if spec.hires is not None:  # two passes: engine/hires.py
                generated = hires.generate(self.denoise, self.upscalers, spec, on_step, on_preview)
            elif spec.mode == "inpaint":  # a canvas: the image, its mask, margins; maybe only the masked box
                generated = self._inpaint(spec, on_step, on_preview)
            else:
                generated = self.denoise(spec, on_step, on_preview)
            if spec.face_fix is not None:
                generated = self._restore_faces(spec.face_fix, generated)
            return generated

    def _restore_faces(self, fix: domain.FaceFix, generated: Generated) -> Generated:
        """`generated` with each image's faces restored (engine/faces.py); the control maps after the
        images are left as they are."""
        count = len(generated.seeds)
        restored = [
            faces.restore_image(self.faces, image, fix.restorer_code, fix.detector_code, fix.strength)
            for image in generated.images[:count]
        ]
        return dataclasses.replace(generated, images=[*restored, *generated.images[count:]])

    def _inpaint(
        self, spec: domain.GenerationSpec, on_step: StepCallback, on_preview: PreviewCallback | None
    ) -> Generated:
        """An inpainting on its canvas (engine/canvas.py): the whole canvas, or only the masked region's
        box, generated at about `masked_resolution`² px and pasted back."""
        prepared = canvas.prepare(spec)
        if spec.inpaint_area != "masked":
            return self.denoise(
                spec, on_step, on_preview, PassInput("inpaint", prepared.image, None, prepared.mask, prepared.blend)
            )
        box = canvas.crop_box(prepared.blend, spec.masked_padding)
        width, height = canvas.process_size(box, spec.masked_resolution)
        crop = spec.evolve(width=width, height=height, inpaint_area="whole", outpaint=domain.NO_MARGINS)
        size = (width, height)
        source = PassInput(
            "inpaint",
            prepared.image.crop(box).resize(size, Image.Resampling.LANCZOS),
            mask=prepared.mask.crop(box).resize(size, Image.Resampling.BILINEAR),
            blend=Image.new("L", size, 255),  # blended once, by `paste`, at the image's own resolution
        )
        generated = self.denoise(crop, on_step, on_preview, source)
        images = [canvas.paste(prepared, image, box) for image in generated.images]
        return Generated(images, generated.seeds, [infotext.of(spec, s) for s in generated.seeds])

    def _references(self, spec: domain.GenerationSpec, width: int, height: int) -> list[ipadapter.Reference]:
        """The spec's IP-Adapter units as references: the adapter file, its image encoder, the image, and
        its mask at the generation's size (width×height)."""
        out = []
        for i, unit in enumerate(spec.control_units):
            if unit.model_type != "ipadapter":
                continue
            entry = self.pipelines.catalog.get("ipadapter", unit.model_code)
            if entry is None or entry.image_encoder is None:
                raise errors.ModelLoadError(
                    f"IP-Adapter {unit.model_code!r} (or its image encoder) is no longer installed; install it again"
                )
            image = controlnet.decoded(spec, unit.image_index, f"ControlNetList[{i}] image")
            mask = controlnet.unit_mask(spec, unit, i, width, height)
            out.append(
                ipadapter.Reference(entry.path, entry.image_encoder, image, unit.weight, unit.start, unit.end, mask)
            )
        return out

    def _free_memory(self) -> None:
        """Room for a retry: the other main models leave memory, then the allocator's cache is emptied
        (unload_all's free_memory: one collection, not two)."""
        self.pipelines.unload_all(keep=self.pipelines.loaded[-1:])  # the model of this request stays

    def denoise(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback,
        on_preview: PreviewCallback | None,
        source: PassInput | None = None,
    ) -> Generated:
        """One denoising pass of `spec`'s batch at its width×height, from the spec's own input, or from
        `source`. Call it inside `generate`'s block (its lock, device and memory errors)."""
        # 1. The pipeline for the mode (txt2img, img2img, inpaint share one loaded model) and a fresh scheduler.
        #    Loading can take long: a cancel that came meanwhile stops here. The API has checked the model
        #    against the request (to_spec): an inpainting model gets a mask, ClipSkip is within its encoder.
        model = self.pipelines.get(spec.model_code)
        on_step(0.0)
        mode = source.mode if source is not None else spec.mode
        assert not model.is_inpaint or mode == "inpaint", f"{spec.model_code!r} is an inpainting model: no mask"
        pipe = model.pipeline(mode)
        # 2. SDXL works on multiples of 8 px: generate at the next one, resize to the exact request at the end.
        width, height = _ceil8(spec.width), _ceil8(spec.height)

        # ControlNet units: their models (held by bytes), their control maps, and the mode's ControlNet
        # pipeline sharing the main model's modules (a unit of weight 0 or an empty step range is left out).
        control = controlnet.prepare(spec, width, height, self.preprocessors.control_map)
        if control.units:
            held = self.controlnets.get([u.model_code for u in control.units], model.base.unet)
            pipe = control.pipeline(model.base, mode, held, spec.cfg_scale > 1)
            on_step(0.0)  # loading control models and their maps can take long: a cancel stops here
        pipe.scheduler = samplers.make_scheduler(spec.sampler, model.scheduler_config, spec.seed)
        _assert_clip_skip_fits(pipe, spec.clip_skip)

        # 3. What the mode's pipeline takes besides the prompt: a size, or a reference image (and its mask)
        #    brought to the requested size by the request's resize mode, then to the multiple of 8.
        reference: Image.Image | None = None
        mask: Image.Image | None = None
        mode_inputs: dict[str, object]
        if mode == "txt2img":
            mode_inputs = {"width": width, "height": height}
        elif mode == "img2img":
            if source is not None and source.latents is not None:
                mode_inputs = {"image": source.latents, "strength": spec.strength}
            else:
                reference = source.image if source is not None and source.image is not None else _reference(spec)
                mode_inputs = {"image": _resized(reference, width, height), "strength": spec.strength}
        else:  # inpaint: a canvas's (engine/canvas.py)
            if source is None:
                prepared = canvas.prepare(spec)
                source = PassInput("inpaint", prepared.image, None, prepared.mask, prepared.blend)
            assert source.image is not None and source.mask is not None
            reference, mask = source.image, source.blend if source.blend is not None else source.mask
            mode_inputs = {
                "image": _resized(reference, width, height),
                "mask_image": _resized(source.mask, width, height),
                "strength": spec.strength,
                "width": width,
                "height": height,
            }
        latent_output = source is not None and source.output == "latent"

        seeds = spec.seeds
        # The plan: chunks of the batch, a sliced or tiled decode, so that the estimated peak fits what the
        # device has free now (admission.py). Tiled decoding never for a seamless request (its seams).
        device = self.pipelines.device
        plan = admission.plan(
            width,
            height,
            len(seeds),
            self.max_chunk,
            free_device_memory(device),
            admission.profile_for(device.type),
            seamless=spec.tiling,
        )
        if not plan.fits or plan.chunk < min(len(seeds), self.max_chunk) or plan.slice_vae:
            log.info("task plan for %d×%d ×%d on %s: %s", width, height, len(seeds), device, plan)
        references = self._references(spec, width, height)
        # 4. LoRAs, embeddings and hypernetworks, and IP-Adapters, for this request only; the model is
        #    restored afterwards.
        with (
            self.adapters.applied(model, spec.sub_models),
            self.ipadapters.applied(pipe, references, spec.cfg_scale) as referenced,
            torch.inference_mode(),
        ):
            # 5. Prompt embeddings with A1111 weighting, long prompts in 75-token chunks, clip skip.
            conditioning = prompts.encode(pipe, spec.prompt, spec.negative_prompt, spec.clip_skip, spec.cfg_scale > 1)

            # 6. Denoise in chunks of the batch; image i uses seed + i, from a CPU generator (same on any device).
            #    A chunk that runs out of memory is retried one image at a time (memory.run_in_chunks).
            def denoise_chunk(chunk_seeds: list[int], on_chunk_step: Callable[[float], None]) -> list[Image.Image]:
                def step_end(step_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                    on_chunk_step((step + 1) / max(1, step_pipe.num_timesteps))
                    if on_preview is not None:
                        latents = kwargs["latents"]
                        on_preview(lambda: previews.latents_to_image(latents))
                    return kwargs

                # The modules' dtypes are restored however the call ends (diffusers upcasts the VAE of an
                # fp16 model for its encode and decode); the latents are decoded and checked for NaN/Inf
                # (fp16 overflow) by precision.decode, which decodes once more in fp32 when that helps.
                with precision.dtypes_kept(pipe):
                    output = pipe(
                        prompt_embeds=conditioning.embeds,
                        pooled_prompt_embeds=conditioning.pooled,
                        negative_prompt_embeds=conditioning.negative_embeds,
                        negative_pooled_prompt_embeds=conditioning.negative_pooled,
                        num_images_per_prompt=len(chunk_seeds),
                        generator=[torch.Generator("cpu").manual_seed(s) for s in chunk_seeds],
                        num_inference_steps=spec.steps,
                        guidance_scale=spec.cfg_scale,
                        **referenced.pipe_kwargs(step_end, pipe),
                        output_type="latent",
                        **mode_inputs,
                        **control.inputs(mode),
                    )
                    if latent_output:
                        precision.check_finite(pipe, output.images, _what(len(chunk_seeds), width, height))
                        return list(output.images.split(1))
                    return precision.decode(pipe, output.images, _what(len(chunk_seeds), width, height))

            with (
                tiling.seamless(pipe, spec.tiling),
                tiling.tiled_vae(pipe, plan.tiled_vae),
                tiling.sliced_vae(pipe, plan.slice_vae),
            ):
                results = memory.run_in_chunks(seeds, plan.chunk, denoise_chunk, on_step, self._free_memory)

        # 7. The model's bytes now: LoRAs loaded as adapters stay with it, and count in the cache's budget.
        model.nbytes = loader.pipeline_bytes(model.base)
        if latent_output:  # a hires fix's first pass: its latents go on to the second
            return Generated(images=[], seeds=seeds, infotexts=[], latents=results)

        # 8. Exact size; inpainting keeps every pixel where the (feathered) mask is 0 exactly; A1111 metadata.
        if results[0].size != (spec.width, spec.height):
            results = [img.resize((spec.width, spec.height), Image.Resampling.LANCZOS) for img in results]
        if mask is not None and reference is not None:
            results = [Image.composite(img, reference, mask) for img in results]
        infotexts = [infotext.of(spec, s) for s in seeds]
        if spec.return_control_maps:  # after the images, one per ControlNet unit run (AI Horde's return_control_map)
            results += [
                m.resize((spec.width, spec.height), Image.Resampling.LANCZOS) if m.size != results[0].size else m
                for m in control.maps
            ]
            infotexts += [f"ControlNet {i}: control map ({u.preprocessor})" for i, u in control.numbered]
        return Generated(images=results, seeds=seeds, infotexts=infotexts)


def _reference(spec: domain.GenerationSpec) -> Image.Image:
    """The request's reference image at exactly the requested size, by its resize mode."""
    assert spec.init_image is not None  # img2img and inpaint always carry one
    image = reference_images.decode(spec.init_image, "image")
    return reference_images.fit(image, spec.width, spec.height, spec.resize_mode)


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _what(count: int, width: int, height: int) -> str:
    """`an image of 64×64`, `4 images of 1024×1024`: a chunk, for messages."""
    return f"an image of {width}×{height}" if count == 1 else f"{count} images of {width}×{height}"


def _ceil8(n: int) -> int:
    return (n + 7) // 8 * 8


def _no_progress(progress: float) -> None:
    """The step callback when the caller passes none."""


def _assert_clip_skip_fits(pipe: Any, clip_skip: int) -> None:
    # ClipSkip n reads hidden_states[-(n + 1)]: at most as deep as the encoder's layer count. The API
    # refuses a deeper one before queueing (to_spec, from the model file's header).
    layers = pipe.text_encoder.config.num_hidden_layers
    assert clip_skip <= layers, f"ClipSkip {clip_skip} is deeper than this model's text encoder (1..{layers})"

"""Load catalog entries into diffusers pipelines and keep the most recently used ones in memory.

Loading never reaches for a model hub: every call passes `local_files_only=True`, and a single-file
checkpoint gets its configs from a local folder (its sidecar's `Config`, or SDXL base's, see sdxl_base).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from picserve import catalog as catalog_module
from picserve import errors
from picserve.engine import sdxl_base

__all__ = ["LoadedModel", "PipelineCache", "resolve_device"]

log = logging.getLogger(__name__)


def _quiet_libraries() -> None:
    # Progress bars and load reports from diffusers/transformers drown the service log.
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LoadedModel:
    """One main model in memory: its txt2img pipeline and the img2img/inpaint ones sharing its modules."""

    def __init__(self, code: str, pipe: Any) -> None:
        self.code = code
        #: the StableDiffusionXLPipeline (txt2img) that owns the model's modules
        self.base = pipe
        #: the model's own scheduler config, from which each request's sampler is built
        self.scheduler_config: dict[str, Any] = dict(pipe.scheduler.config)
        #: PEFT adapter name → file version (mtime_ns, size) of the LoRAs loaded into this model (see adapters.py)
        self.loras: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._derived_pipelines: dict[str, Any] = {}  # mode → img2img/inpaint pipeline sharing `base`'s modules

    @property
    def is_inpaint(self) -> bool:
        return self.base.unet.config.in_channels == 9

    def pipeline(self, mode: str) -> Any:
        """txt2img, img2img or inpaint: derived pipelines come from `from_pipe` (no extra memory)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

        if mode == "txt2img":
            return self.base
        if mode not in self._derived_pipelines:
            cls = StableDiffusionXLImg2ImgPipeline if mode == "img2img" else StableDiffusionXLInpaintPipeline
            derived = cls.from_pipe(self.base)
            derived.set_progress_bar_config(disable=True)
            self._derived_pipelines[mode] = derived
        return self._derived_pipelines[mode]


class PipelineCache:
    """An LRU of loaded SDXL text-to-image pipelines, keyed by ModelCode.

    CPU runs fp32 (bf16/fp16 are many times slower there); CUDA runs fp16, with the SDXL VAE upcast
    that diffusers applies when the VAE config asks for it.

    `max_loaded` main models stay in memory (at least one); `cache_dir` receives the SDXL base config
    folders that single-file checkpoints without a sidecar config load with (`~/.cache/picserve` when None).
    """

    def __init__(
        self, catalog: catalog_module.Catalog, device: str = "auto", max_loaded: int = 1, cache_dir: Path | None = None
    ) -> None:
        self.catalog = catalog
        self.device = resolve_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.max_loaded = max(1, max_loaded)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "picserve")
        self._models_by_code: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        _quiet_libraries()

    @property
    def loaded(self) -> list[str]:
        """The model codes in memory, least recently used first."""
        return list(self._models_by_code)

    def models(self) -> list[LoadedModel]:
        """The loaded models, least recently used first, without touching the LRU order."""
        with self._lock:
            return list(self._models_by_code.values())

    def get(self, code: str) -> LoadedModel:
        """The main model `code`, loaded now if needed (unloading the least recently used beyond `max_loaded`)."""
        with self._lock:
            if code in self._models_by_code:
                self._models_by_code.move_to_end(code)
                return self._models_by_code[code]
            entry = self.catalog.get("main", code)
            if entry is None:
                raise errors.ModelNotFound(f"MainModel.ModelCode {code!r} is not in the models folder")
            while len(self._models_by_code) >= self.max_loaded:
                evicted, _ = self._models_by_code.popitem(last=False)
                log.info("unloading main model %s", evicted)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            model = LoadedModel(code, self._load(entry))
            self._models_by_code[code] = model
            return model

    def _load(self, entry: catalog_module.Entry) -> Any:
        from diffusers import StableDiffusionXLPipeline

        log.info("loading main model %s from %s", entry.code, entry.path)
        # local_files_only: diffusers, and the transformers loaders it calls for the text encoders and
        # tokenizers, read only the given folders and never ask a hub for a config or a newer revision.
        options = {"dtype": self.dtype, "add_watermarker": False, "local_files_only": True}
        try:
            if entry.is_single_file:
                config = entry.config or sdxl_base.config_dir(self.cache_dir, inpaint=_is_inpaint(entry.path))
                if not config.is_dir():
                    # diffusers would take a missing folder for a hub repo id, and look it up online
                    raise errors.GenerationError(f"model {entry.code!r}: its config folder {config} is missing")
                pipe = StableDiffusionXLPipeline.from_single_file(str(entry.path), config=str(config), **options)
            else:
                pipe = StableDiffusionXLPipeline.from_pretrained(str(entry.path), **options)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise errors.GenerationError(f"model {entry.code!r} could not be loaded: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)


def _is_inpaint(path: Path) -> bool:
    """SDXL inpaint checkpoints differ only by a 9-channel first convolution."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        return key in f.keys() and f.get_slice(key).get_shape()[1] == 9

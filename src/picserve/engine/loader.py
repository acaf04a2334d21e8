"""Load catalog entries into diffusers pipelines and keep the most recently used ones in memory."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from picserve import catalog as catalog_module
from picserve import errors
from picserve.engine import sdxl_base

__all__ = ["LoadedModel", "PipelineCache", "resolve_device"]

log = logging.getLogger(__name__)

# Never reach for a model hub: every config a checkpoint needs is local (see sdxl_base).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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

    def __init__(self, code: str, pipe):
        self.code = code
        self.base = pipe
        #: the model's own scheduler config, from which each request's sampler is built
        self.scheduler_config = dict(pipe.scheduler.config)
        #: PEFT adapter name → file version of the LoRAs loaded into this model (see adapters.py)
        self.loras: OrderedDict[str, tuple] = OrderedDict()
        self._derived: dict[str, object] = {}

    @property
    def is_inpaint(self) -> bool:
        return self.base.unet.config.in_channels == 9

    def pipeline(self, mode: str):
        """txt2img, img2img or inpaint: derived pipelines come from `from_pipe` (no extra memory)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

        if mode == "txt2img":
            return self.base
        if mode not in self._derived:
            cls = StableDiffusionXLImg2ImgPipeline if mode == "img2img" else StableDiffusionXLInpaintPipeline
            derived = cls.from_pipe(self.base)
            derived.set_progress_bar_config(disable=True)
            self._derived[mode] = derived
        return self._derived[mode]


class PipelineCache:
    """An LRU of loaded SDXL text-to-image pipelines, keyed by ModelCode.

    CPU runs fp32 (bf16/fp16 are many times slower there); CUDA runs fp16, with the SDXL VAE upcast
    that diffusers applies when the VAE config asks for it.
    """

    def __init__(
        self, catalog: catalog_module.Catalog, device: str = "auto", max_loaded: int = 1, cache_dir: Path | None = None
    ):
        self.catalog = catalog
        self.device = resolve_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.max_loaded = max(1, max_loaded)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "picserve")
        self._pipes: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        _quiet_libraries()

    @property
    def loaded(self) -> list[str]:
        return list(self._pipes)

    def models(self) -> list[LoadedModel]:
        """The loaded models, least recently used first, without touching the LRU order."""
        with self._lock:
            return list(self._pipes.values())

    def get(self, code: str) -> LoadedModel:
        with self._lock:
            if code in self._pipes:
                self._pipes.move_to_end(code)
                return self._pipes[code]
            entry = self.catalog.get("main", code)
            if entry is None:
                raise errors.ModelNotFound(f"MainModel.ModelCode {code!r} is not in the models folder")
            while len(self._pipes) >= self.max_loaded:
                evicted, _ = self._pipes.popitem(last=False)
                log.info("unloading main model %s", evicted)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            model = LoadedModel(code, self._load(entry))
            self._pipes[code] = model
            return model

    def _load(self, entry: catalog_module.Entry):
        from diffusers import StableDiffusionXLPipeline

        log.info("loading main model %s from %s", entry.code, entry.path)
        options = {"dtype": self.dtype, "add_watermarker": False}
        try:
            if entry.is_single_file:
                config = entry.config or sdxl_base.config_dir(self.cache_dir, inpaint=_is_inpaint(entry.path))
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

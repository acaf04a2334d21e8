"""Load catalog entries into diffusers pipelines and keep the most recently used ones in memory.

Loading never reaches for a model hub: every call passes `local_files_only=True`, and a single-file
checkpoint gets its configs from a local folder (its sidecar's `Config`, or SDXL base's, see sdxl_base).

A model file removed or damaged after the task was accepted is a `ModelLoadError` that names the file
and says what the operator should do; a model that fails to load is never cached (the cache holds only
models that loaded completely). Running out of memory while loading unloads the other models and tries
once more, then is an `OutOfMemory`.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from picserve import catalog as catalog_module
from picserve import errors
from picserve.engine import memory, sdxl_base

__all__ = ["LoadedModel", "PipelineCache", "free_memory", "one_line", "resolve_device"]

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


def free_memory(device: torch.device) -> None:
    """Return what unreferenced tensors hold: collect reference cycles, then empty the CUDA allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
        """The main model `code`, loaded now if needed (unloading the least recently used beyond `max_loaded`).

        Raises `errors.ModelLoadError` when its file is gone or cannot be read, `errors.OutOfMemory` when
        it does not fit in memory even with every other model unloaded.
        """
        with self._lock:
            if code in self._models_by_code:
                self._models_by_code.move_to_end(code)
                return self._models_by_code[code]
            entry = self.catalog.get("main", code)
            if entry is None:  # the API checked it when the task was submitted: it went away since
                raise errors.ModelLoadError(
                    f"MainModel {code!r} is no longer in the models folder (it was removed or renamed after the "
                    "task was accepted); the operator should restore it; ListModels shows what is installed"
                )
            self._unload(len(self._models_by_code) - self.max_loaded + 1)
            model = LoadedModel(code, self._load_making_room(entry))
            self._models_by_code[code] = model
            return model

    def unload_all(self, keep: list[str] | None = None) -> None:
        """Unload every main model but those in `keep` (to make room after running out of memory)."""
        with self._lock:
            for code in [c for c in self._models_by_code if c not in (keep or [])]:
                log.info("unloading main model %s", code)
                del self._models_by_code[code]

    def _unload(self, count: int) -> None:
        """Unload the `count` least recently used models, and free what they held."""
        if count <= 0:
            return
        for _ in range(min(count, len(self._models_by_code))):
            evicted, _ = self._models_by_code.popitem(last=False)
            log.info("unloading main model %s", evicted)
        free_memory(self.device)

    def _load_making_room(self, entry: catalog_module.Entry) -> Any:
        """`_load`; out of memory with other models loaded, those are unloaded and the load tried once more."""
        for attempt in (1, 2):
            try:
                return self._load(entry)
            except Exception as exc:
                if not memory.is_out_of_memory(exc):
                    raise
                if attempt == 2 or not self._models_by_code:
                    memory.release(exc, lambda: free_memory(self.device))
                    device = "the GPU" if self.device.type == "cuda" else "the server"
                    raise errors.OutOfMemory(
                        f"{device} ran out of memory loading MainModel {entry.code!r}; retry later; if it "
                        "persists, the operator should run this model on a device with more memory"
                    ) from exc
                log.warning("out of memory loading %s (%s); unloading the other models", entry.code, exc)
            self._unload(len(self._models_by_code))  # out of the except block: the failed load's tensors are free
        raise AssertionError("unreachable")

    def _load(self, entry: catalog_module.Entry) -> Any:
        """The pipeline of `entry`; ModelLoadError when its files cannot be read (out of memory is raised as is)."""
        from diffusers import StableDiffusionXLPipeline

        log.info("loading main model %s from %s", entry.code, entry.path)
        # local_files_only: diffusers, and the transformers loaders it calls for the text encoders and
        # tokenizers, read only the given folders and never ask a hub for a config or a newer revision.
        options = {"dtype": self.dtype, "add_watermarker": False, "local_files_only": True}
        where = self._relative(entry.path)
        try:
            if not entry.path.exists():  # diffusers would take a missing path for a hub repo id
                raise FileNotFoundError("it is missing")
            if entry.path.is_file():
                config = entry.config or sdxl_base.config_dir(self.cache_dir, inpaint=_is_inpaint(entry.path))
                if not config.is_dir():
                    raise errors.ModelLoadError(
                        f"MainModel {entry.code!r}: its config folder {self._relative(config)} is missing; the "
                        "operator should restore it, or correct the Config in the model's sidecar JSON"
                    )
                pipe = StableDiffusionXLPipeline.from_single_file(str(entry.path), config=str(config), **options)
            else:
                pipe = StableDiffusionXLPipeline.from_pretrained(str(entry.path), **options)
            pipe.set_progress_bar_config(disable=True)
            return pipe.to(self.device)
        except errors.PicserveError:
            raise
        except Exception as exc:  # a damaged file, a folder missing a part: whatever the readers raise
            if memory.is_out_of_memory(exc):
                raise
            kind = "file" if entry.path.is_file() or entry.path.suffix else "folder"
            reason = one_line(exc, self.catalog.models_dir)
            raise errors.ModelLoadError(
                f"MainModel {entry.code!r}: the {kind} {where} could not be read ({reason}); "
                "the operator should restore or replace it; ListModels shows what is installed"
            ) from exc

    def _relative(self, path: Path) -> str:
        """`path` as `models/main/x.safetensors`: where in the models folder, without the server's layout."""
        root = self.catalog.models_dir
        try:
            return str(Path(root.name) / path.relative_to(root))
        except ValueError:
            return str(path)


def one_line(exc: BaseException, models_dir: Path | None = None) -> str:
    """What `exc` says, on one line and short enough for a task's error message, followed by what the
    first exception of its chain said (diffusers wraps a reader's error in its own "Unable to load…").
    Paths inside `models_dir` are shown from its name on (`models/main/x`), as the operator knows them."""
    root = exc
    for _ in range(10):  # the exception it was raised from (or while handling), down to the first
        if (earlier := root.__cause__ or root.__context__) is None:
            break
        root = earlier

    def text(error: BaseException, limit: int) -> str:
        said = " ".join(str(error).split()).rstrip(".") or type(error).__name__
        if models_dir is not None:
            said = said.replace(str(models_dir.parent) + os.sep, "")
        return said if len(said) <= limit else said[: limit - 3] + "..."

    outer, first = text(exc, 200), text(root, 200)
    return outer if root is exc or first in outer else f"{outer}: {first}"


def _is_inpaint(path: Path) -> bool:
    """SDXL inpaint checkpoints differ only by a 9-channel first convolution."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        return key in f.keys() and f.get_slice(key).get_shape()[1] == 9

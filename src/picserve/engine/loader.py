"""Load catalog entries into diffusers pipelines and keep the most recently used ones in memory.

Loading never reaches for a model hub: every call passes `local_files_only=True`, and a single-file
checkpoint gets its configs from a local folder (its sidecar's `Config`, or SDXL base's, see sdxl_base).

A model file removed or damaged after the task was accepted is a `ModelLoadError` that names the file
and says what the operator should do; a model that fails to load is never cached (the cache holds only
models that loaded completely). Running out of memory while loading unloads the other models and tries
once more, then is an `OutOfMemory`.

What users download loads as such: a v-prediction checkpoint (its `v_pred`/`ztsnr` keys, or its sidecar's
`Prediction`/`ZeroTerminalSNR`, read by the catalog) gets the scheduler config diffusers documents for it
(samplers.prediction_config); fp16, bf16 and fp8 (e4m3fn, e5m2) single files are upcast to the compute
dtype by diffusers' own loaders (checked by tests/engine/test_model_files.py); a main model whose sidecar
(or PICSERVE_DEFAULT_VAE) names a VAE of models/vae decodes with it, built on the model's own VAE config.
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
from picserve import errors, modelinfo
from picserve.engine import memory, samplers, sdxl_base

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

    def __init__(self, code: str, pipe: Any, recipe: tuple[Any, ...] = ()) -> None:
        self.code = code
        #: the StableDiffusionXLPipeline (txt2img) that owns the model's modules
        self.base = pipe
        #: the model's own scheduler config (its prediction type applied), from which each request's sampler is built
        self.scheduler_config: dict[str, Any] = dict(pipe.scheduler.config)
        #: what of the catalog entry it was loaded with: its VAE and prediction type (see `_recipe`)
        self.recipe = recipe
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
            entry = self.catalog.get("main", code)
            loaded = self._models_by_code.get(code)
            if loaded is not None and (entry is None or loaded.recipe == _recipe(entry)):
                self._models_by_code.move_to_end(code)
                return loaded
            if entry is None:  # the API checked it when the task was submitted: it went away since
                raise errors.ModelLoadError(
                    f"MainModel {code!r} is no longer in the models folder (it was removed or renamed after the "
                    "task was accepted); the operator should restore it; ListModels shows what is installed"
                )
            if loaded is not None:  # its sidecar now names another VAE or prediction type: load it anew
                log.info("main model %s changed its VAE or prediction type; loading it again", code)
                del self._models_by_code[code]
                free_memory(self.device)
            self._unload(len(self._models_by_code) - self.max_loaded + 1)
            model = LoadedModel(code, self._load_making_room(entry), _recipe(entry))
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
                if entry.vae:  # built on the model's own VAE config, passed to the pipeline in place of its VAE
                    options["vae"] = self._vae(entry, config)
                pipe = StableDiffusionXLPipeline.from_single_file(str(entry.path), config=str(config), **options)
            else:
                if entry.vae:
                    options["vae"] = self._vae(entry, entry.path)
                pipe = StableDiffusionXLPipeline.from_pretrained(str(entry.path), **options)
            pipe.set_progress_bar_config(disable=True)
            # v-prediction, zero terminal SNR: every request's sampler is built from this config
            prediction = samplers.prediction_config(entry.prediction == "v", entry.zero_terminal_snr)
            pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **prediction})
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

    def _vae(self, entry: catalog_module.Entry, config: Path) -> Any:
        """The VAE that `entry`'s sidecar (or the default) names, built on the VAE config of the folder
        `config` (the main model's own: its latent scaling stays the model's); ModelLoadError when it is
        not installed, does not fit the model, or cannot be read."""
        from diffusers import AutoencoderKL

        code = str(entry.vae)
        named_by = "PICSERVE_DEFAULT_VAE" if code == self.catalog.default_vae else "the Vae of its sidecar JSON"
        vae = self.catalog.get("vae", code)
        if vae is None:
            raise errors.ModelLoadError(
                f"MainModel {entry.code!r} decodes with the VAE {code!r} ({named_by}), which is not installed: "
                f"{self._relative(self.catalog.models_dir / 'vae')} has no {code}.safetensors nor {code}/; the "
                'operator should install it there, or name another VAE ("Vae": null keeps the checkpoint\'s own)'
            )
        where = self._relative(vae.path)
        if (why := modelinfo.misfit(entry.info, vae.info, "vae")) is not None:
            raise errors.ModelLoadError(
                f"MainModel {entry.code!r}: the VAE {where} ({named_by}) does not fit it: {why}; the operator "
                "should name a VAE made for this model"
            )
        options = {"dtype": self.dtype, "local_files_only": True}
        try:
            if not vae.path.exists():  # diffusers would take a missing path for a hub repo id
                raise FileNotFoundError("it is missing")
            if vae.path.is_dir():
                return AutoencoderKL.from_pretrained(str(vae.path), **options)
            return AutoencoderKL.from_single_file(str(vae.path), config=str(config), subfolder="vae", **options)
        except Exception as exc:  # a damaged file, or widths other than the model's VAE config
            if memory.is_out_of_memory(exc):
                raise
            reason = one_line(exc, self.catalog.models_dir)
            raise errors.ModelLoadError(
                f"MainModel {entry.code!r}: the VAE {where} ({named_by}) could not be loaded for it ({reason}); "
                "the operator should restore or replace it, or name another VAE"
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


def _recipe(entry: catalog_module.Entry) -> tuple[Any, ...]:
    """What of a main model's catalog entry a loaded pipeline depends on besides its file."""
    return (entry.vae, entry.prediction, entry.zero_terminal_snr)


def _is_inpaint(path: Path) -> bool:
    """SDXL inpaint checkpoints differ only by a 9-channel first convolution."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        return key in f.keys() and f.get_slice(key).get_shape()[1] == 9

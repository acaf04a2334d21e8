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
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from picserve import admission, errors, modelinfo
from picserve import catalog as catalog_module
from picserve.engine import memory, precision, samplers, sdxl_base

__all__ = [
    "DTYPES",
    "LoadedModel",
    "PipelineCache",
    "free_memory",
    "one_line",
    "pipeline_bytes",
    "resolve_device",
    "resolve_dtype",
]

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


#: PICSERVE_DTYPE's names of the compute dtypes a worker may run in
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype for PICSERVE_DTYPE `name` on `device`: "auto" (or None) is fp16 on CUDA and fp32
    elsewhere (bf16/fp16 matmuls are many times slower on a CPU); "float16", "bfloat16", "float32" (also
    "fp16", "bf16", "fp32") are taken as they are. Raises ValueError naming the allowed values."""
    if isinstance(name, torch.dtype):
        return name
    key = (name or "auto").strip().lower()
    key = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}.get(
        key, key
    )
    if key == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if key not in DTYPES:
        raise ValueError(f"PICSERVE_DTYPE must be auto, float16, bfloat16 or float32 (got {name!r})")
    return DTYPES[key]


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
        #: PEFT adapter name → file version (mtime_ns, size) of the LoRAs loaded into this model (see lora/apply.py)
        self.loras: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._derived_pipelines: dict[str, Any] = {}  # mode → img2img/inpaint pipeline sharing `base`'s modules
        #: bytes of its weights and buffers (set by the cache once it is loaded)
        self.nbytes = 0

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
            # from_pipe casts the new pipeline, whose modules are the base's own, to its `dtype` argument,
            # float32 by default: the model's dtype is passed (every module is loaded in it), or the whole
            # model would turn fp32 for good after its first img2img or inpaint request.
            derived = cls.from_pipe(self.base, dtype=precision.module_dtypes(self.base)["unet"])
            derived.set_progress_bar_config(disable=True)
            self._derived_pipelines[mode] = derived
        return self._derived_pipelines[mode]


class PipelineCache:
    """The main models in memory, in two tiers, each a least-recently-used list bounded by bytes.

    - **Device**: models on the execution device, ready to run, up to `memory_budget` bytes of weights
      (PICSERVE_MODEL_MEMORY; None: unbounded) and, when `max_loaded` > 0, that many models.
    - **Host**: models evicted from the device, kept whole in CPU RAM (pinned where CUDA is there, so
      that the copy back runs at full bus speed), up to `host_budget` bytes (PICSERVE_MODEL_HOST_MEMORY;
      0 for none). One comes back to the device far faster than from disk, as it was: its LoRAs,
      LyCORIS patches and derived pipelines with it. On a CPU device the host tier is the same RAM, so
      its default is 0 there.

    A model's bytes are measured when it is loaded (its weights and buffers, each storage once); before
    a load, the room it needs is estimated from its file's tensor shapes (admission.model_bytes), and the
    least recently used models leave the device until it fits. A model larger than the whole budget is
    loaded all the same, alone.

    CPU runs fp32 (bf16/fp16 are many times slower there); CUDA runs fp16, with the SDXL VAE upcast
    that diffusers applies when the VAE config asks for it. `cache_dir` receives the SDXL base config
    folders that single-file checkpoints without a sidecar config load with (`~/.cache/picserve` when None).
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: str = "auto",
        max_loaded: int = 0,
        cache_dir: Path | None = None,
        memory_budget: int | None = None,
        host_budget: int = 0,
        prepare: Callable[[Any], None] | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.catalog = catalog
        self.device = resolve_device(device)
        #: the compute dtype every model is loaded in and kept in (PICSERVE_DTYPE; see resolve_dtype)
        self.dtype = resolve_dtype(dtype, self.device)
        #: most main models on the device at once; 0: as many as `memory_budget` holds
        self.max_loaded = max(0, max_loaded)
        #: bytes of main-model weights kept on the device; None: no bound but `max_loaded`
        self.memory_budget = memory_budget
        #: bytes of main-model weights kept in CPU RAM after they leave the device; 0: none
        self.host_budget = max(0, host_budget)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "picserve")
        #: applied to each pipeline right after it is loaded from disk (engine speed switches)
        self._prepare = prepare
        self._models_by_code: OrderedDict[str, LoadedModel] = OrderedDict()  # on the device, LRU first
        self._host: OrderedDict[str, LoadedModel] = OrderedDict()  # in CPU RAM, LRU first
        #: loads from disk, restores from the host tier, models moved to the host tier, models dropped
        self.counts = {"disk_loads": 0, "host_restores": 0, "offloads": 0, "drops": 0}
        self._lock = threading.Lock()
        _quiet_libraries()

    @property
    def loaded(self) -> list[str]:
        """The model codes on the device, least recently used first."""
        return list(self._models_by_code)

    @property
    def on_host(self) -> list[str]:
        """The model codes in the host tier (CPU RAM), least recently used first."""
        return list(self._host)

    def models(self) -> list[LoadedModel]:
        """The models on the device, least recently used first, without touching the LRU order."""
        with self._lock:
            return list(self._models_by_code.values())

    def used(self) -> tuple[int, int]:
        """Bytes of weights on the device and in the host tier."""
        with self._lock:
            return _total(self._models_by_code), _total(self._host)

    def get(self, code: str) -> LoadedModel:
        """The main model `code` on the device: as it is there, brought back from the host tier, or
        loaded from disk (the least recently used models leaving the device to make room).

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
            held = self._host.pop(code, None)
            if held is not None and held.recipe == _recipe(entry):
                return self._restore(held)
            del held  # a host copy of an older recipe is dropped with the reference
            self._make_room(admission.model_bytes(entry.path, self.dtype.itemsize))
            model = LoadedModel(code, self._load_making_room(entry), _recipe(entry))
            model.nbytes = pipeline_bytes(model.base)
            self.counts["disk_loads"] += 1
            self._models_by_code[code] = model
            self._make_room(0, adding=False)  # an estimate below the truth: the others make room now
            log.info(
                "main model %s loaded from disk (%s on %s; %s on the device, %s in RAM)",
                code,
                admission.shown(model.nbytes),
                self.device,
                admission.shown(_total(self._models_by_code)),
                admission.shown(_total(self._host)),
            )
            return model

    def unload_all(self, keep: list[str] | None = None) -> None:
        """Every main model but those in `keep` leaves the device (to make room after running out of
        memory); to the host tier where it has room."""
        with self._lock:
            for code in [c for c in self._models_by_code if c not in (keep or [])]:
                self._evict(code)
            free_memory(self.device)

    def _restore(self, model: LoadedModel) -> LoadedModel:
        """`model`, from the host tier, back on the device (room made first)."""
        self._make_room(model.nbytes)
        started = time.perf_counter()
        try:
            _move(model.base, self.device, pin=False)
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            memory.release(exc, lambda: None)
            _move(model.base, torch.device("cpu"), pin=False)  # what reached the device leaves it again
            self._unload_everything()
            _move(model.base, self.device, pin=False)
        self.counts["host_restores"] += 1
        self._models_by_code[model.code] = model
        log.info(
            "main model %s restored from RAM in %.2f s (%s)",
            model.code,
            time.perf_counter() - started,
            admission.shown(model.nbytes),
        )
        return model

    def _make_room(self, needed: int, adding: bool = True) -> None:
        """Least recently used models leave the device until one more model of `needed` bytes fits the
        budget and `max_loaded` (`adding` False: until what is there fits; the newest always stays). The
        memory is freed (a full garbage collection) only when a model left: a collection of a worker's
        heap takes a noticeable part of a second, and a load that evicts nothing has nothing to free."""
        evicted = False
        while self._models_by_code:
            count = len(self._models_by_code) + adding
            over_count = self.max_loaded > 0 and count > self.max_loaded
            used = _total(self._models_by_code) + needed
            over_bytes = self.memory_budget is not None and used > self.memory_budget
            if not (over_count or over_bytes) or (not adding and len(self._models_by_code) == 1):
                break
            self._evict(next(iter(self._models_by_code)))
            evicted = True
        if evicted:
            free_memory(self.device)

    def _evict(self, code: str) -> None:
        """`code` leaves the device: to the host tier when it fits its budget, else out of memory."""
        model = self._models_by_code.pop(code)
        if 0 < model.nbytes <= self.host_budget:
            while self._host and _total(self._host) + model.nbytes > self.host_budget:
                dropped, gone = self._host.popitem(last=False)
                _unpin(gone.base)  # its page-locked RAM is given back now, not when it is collected
                self.counts["drops"] += 1
                log.info("main model %s dropped from RAM", dropped)
            if self.device.type != "cpu":
                _move(model.base, torch.device("cpu"), pin=torch.cuda.is_available())
            self._host[code] = model
            self.counts["offloads"] += 1
            pinned = _pinned_bytes(model.base)
            log.info(
                "main model %s moved from %s to RAM (%s%s)",
                code,
                self.device,
                admission.shown(model.nbytes),
                f"; one page-locked block of {pinned:,} bytes" if pinned else "",
            )
        else:
            self.counts["drops"] += 1
            log.info("unloading main model %s", code)

    def _unload_everything(self) -> None:
        for code in list(self._models_by_code):
            self._evict(code)
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
            self._unload_everything()  # out of the except block: the failed load's tensors are free
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
            pipe = pipe.to(self.device)
            if self._prepare is not None:
                self._prepare(pipe)
            return pipe
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
                model = AutoencoderKL.from_pretrained(str(vae.path), **options)
            else:
                model = AutoencoderKL.from_single_file(str(vae.path), config=str(config), subfolder="vae", **options)
            # The fp32 upcast for fp16 decodes is the VAE's own: its sidecar's ForceUpcast (an "fp16-fix"
            # VAE needs none), not the main model's config that a single file is built on.
            if vae.force_upcast is not None:
                model.register_to_config(force_upcast=vae.force_upcast)
            return model
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


def pipeline_bytes(*pipes: Any) -> int:
    """Bytes of the weights and buffers of `pipes` (a model's pipelines), each storage counted once
    (shared or tied ones too)."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in _weights(*pipes)}
    return sum(storages.values())


def _total(models: Mapping[str, LoadedModel]) -> int:
    return sum(model.nbytes for model in models.values())


def _move(pipe: Any, device: torch.device, pin: bool) -> None:
    """A pipeline's modules to `device`; to the CPU with `pin`, into one page-locked block of its own
    (`_pin`: the copy back to the GPU then runs asynchronously at full speed). Once its weights are on
    a device again, the block is released (`_unpin`)."""
    if pin and device.type == "cpu":
        _pin(pipe)
        return
    for name in _COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        module.to(device, non_blocking=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if device.type != "cpu":
        _unpin(pipe)


#: each storage's place in a pinned block starts at a multiple of this many bytes (of every dtype's size)
_BLOCK_ALIGN = 512
#: the pipeline attribute that holds its `_PinnedBlock` while its weights are in RAM
_PINNED = "_picserve_pinned_block"


def _pin(pipe: Any) -> None:
    """A pipeline's weights and buffers, from wherever they are, into one page-locked block of host
    memory: as many bytes as `pipeline_bytes` counts (each storage once, tied weights kept tied) plus
    alignment, where pinning each tensor apart took a third more (torch's pinned allocator rounds each
    block up to a power of two) and kept it cached after the model left."""
    _unpin(pipe)
    tensors = _weights(pipe)
    _, size = _block_layout(tensors)
    sources = {tensor.device for tensor in tensors if tensor.device.type == "cuda"}
    block = _PinnedBlock(size, next(iter(sources), None))
    assert block.tensor is not None
    _pack(tensors, block.tensor)
    for source in sources:  # the copies out of the GPU are done
        torch.cuda.synchronize(source)
    setattr(pipe, _PINNED, block)


def _unpin(pipe: Any) -> None:
    """Release the pipeline's pinned block, if it has one (see `_PinnedBlock.release`)."""
    block = getattr(pipe, _PINNED, None)
    if block is not None:
        delattr(pipe, _PINNED)
        block.release()


def _pinned_bytes(pipe: Any) -> int:
    """Bytes of page-locked memory the pipeline's weights hold (0: none)."""
    block = getattr(pipe, _PINNED, None)
    return block.nbytes if block is not None and block.pinned else 0


def _weights(*pipes: Any) -> list[torch.Tensor]:
    """The parameters and buffers of `pipes`, each tensor once."""
    found: dict[int, torch.Tensor] = {}
    for pipe in pipes:
        for name in _COMPONENTS:
            module = getattr(pipe, name, None)
            if module is not None:
                for tensor in [*module.parameters(), *module.buffers()]:
                    found.setdefault(id(tensor), tensor)
    return list(found.values())


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def _block_layout(tensors: list[torch.Tensor]) -> tuple[dict[tuple[str, int], int], int]:
    """Where each storage of `tensors` goes in one block (a storage several tensors share, once): its
    byte offset, a multiple of `_BLOCK_ALIGN`, by `_storage_key`; and the block's size in bytes."""
    sizes: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if nbytes := tensor.untyped_storage().nbytes():
            key = _storage_key(tensor)
            sizes[key] = max(sizes.get(key, 0), nbytes)
    offsets, size = {}, 0
    for key, nbytes in sizes.items():
        offsets[key] = size
        size += -(-nbytes // _BLOCK_ALIGN) * _BLOCK_ALIGN
    return offsets, size


def _pack(tensors: list[torch.Tensor], block: torch.Tensor) -> None:
    """Each of `tensors` copied into `block` (1-D uint8 on the CPU, at least `_block_layout`'s size) and
    made a view of it with its dtype, shape, strides and place in its storage: the tensors that shared
    a storage share the block's, so tied weights stay tied. Copies from a GPU are queued on its current
    stream: synchronize before reading the block."""
    offsets, size = _block_layout(tensors)
    if block.dtype != torch.uint8 or block.dim() != 1 or block.numel() < size or block.storage_offset() % 16:
        raise ValueError(f"a block for {size} bytes is a 1-D uint8 tensor of that many, 16-byte aligned")
    datas = [tensor.data for tensor in tensors]  # the old storages live until every tensor has moved
    copied: set[tuple[str, int]] = set()
    for tensor, data in zip(tensors, datas, strict=True):
        key = _storage_key(data)
        if key not in offsets:  # an empty tensor: nothing to copy
            tensor.data = data.to(block.device)
            continue
        start, storage = offsets[key], data.untyped_storage()
        if key not in copied:
            source = torch.empty(0, dtype=torch.uint8, device=data.device).set_(storage)
            block[start : start + storage.nbytes()].copy_(source, non_blocking=True)
            copied.add(key)
        offset = (block.storage_offset() + start) // data.element_size() + data.storage_offset()
        view = torch.empty(0, dtype=data.dtype, device=block.device)
        tensor.data = view.set_(block.untyped_storage(), offset, data.size(), data.stride())


class _PinnedBlock:
    """One block of host memory for a model's weights, page-locked (cudaHostRegister) where CUDA is:
    exactly its bytes, in whole pages, outside torch's pinned allocator, which would round it up to a
    power of two and keep it cached once the model left. Where locking fails it stays pageable (restores
    are then slower), with a warning.

    `release` (or collection) unlocks it; its memory is freed with the last tensor that views it: at once
    when the model's weights have left it."""

    def __init__(self, nbytes: int, device: torch.device | None) -> None:
        import mmap

        page = mmap.PAGESIZE
        #: bytes in the block (page-locked when `pinned`)
        self.nbytes = -(-nbytes // page) * page  # whole pages: none shared with another allocation
        raw = torch.empty(self.nbytes + page, dtype=torch.uint8)
        skip = -raw.data_ptr() % page
        self.tensor: torch.Tensor | None = raw[skip : skip + self.nbytes]
        #: the GPU whose copies read it (synchronized before it is unlocked)
        self.device = device
        self.pinned = False
        if self.nbytes and torch.cuda.is_available():
            try:
                with _current(device):
                    error = torch.cuda.cudart().cudaHostRegister(self.tensor.data_ptr(), self.nbytes, 0)
                self.pinned = int(error) == 0
                failure = f"CUDA error {int(error)}"
            except Exception as exc:  # no CUDA runtime to ask: pageable
                failure = str(exc)
            if not self.pinned:
                log.warning(
                    "could not page-lock %s of RAM for a model's weights (%s): they stay in pageable RAM, "
                    "and come back to the GPU slower",
                    admission.shown(self.nbytes),
                    failure,
                )

    def release(self) -> None:
        """Unlock the block (once no copy from it runs) and let it go; torch's pinned cache is emptied too."""
        if self.tensor is None:
            return
        if self.pinned:
            if self.device is not None:  # (restores synchronize their device themselves)
                torch.cuda.synchronize(self.device)
            with _current(self.device):
                torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            self.pinned = False
        self.tensor = None
        empty_host_cache = getattr(torch.accelerator, "empty_host_cache", None)
        if empty_host_cache is not None and torch.cuda.is_initialized():
            empty_host_cache()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter exit torch may be gone already
            pass


def _current(device: torch.device | None) -> Any:
    """A context in which `device` is the current GPU: the CUDA runtime's calls then use its context,
    instead of making one on GPU 0 (a worker on cuda:1 has none there)."""
    import contextlib

    return contextlib.nullcontext() if device is None else torch.cuda.device(device)


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


#: the modules of an SDXL pipeline that hold weights
_COMPONENTS = precision.COMPONENTS


def _recipe(entry: catalog_module.Entry) -> tuple[Any, ...]:
    """What of a main model's catalog entry a loaded pipeline depends on besides its file."""
    return (entry.vae, entry.prediction, entry.zero_terminal_snr)


def _is_inpaint(path: Path) -> bool:
    """SDXL inpaint checkpoints differ only by a 9-channel first convolution."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        return key in f.keys() and f.get_slice(key).get_shape()[1] == 9

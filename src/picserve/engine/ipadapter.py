"""IP-Adapter reference images on an SDXL pipeline, for one generation, leaving the pipeline as it was.

A request's IP-Adapter units each name an adapter file (h94/IP-Adapter's `.safetensors` or `.bin`), the
CLIP vision encoder folder it needs, a reference image, a weight and a step range. `IPAdapters.applied`
is a context manager around one generation that

1. loads the adapter files and encoders it does not hold yet (`IPAdapters` keeps them in an LRU bounded
   in bytes, keyed by path, file version (mtime, size), device and dtype; the encoder and the adapter
   weights live on the UNet's device in its dtype, so a request pays no copy);
2. encodes each reference image once with that unit's own encoder, as diffusers' `encode_image` does
   (the projected `image_embeds` for a plain adapter, the penultimate hidden states for Plus; for
   classifier-free guidance, the negative of a zero image / zero embeddings before it), and yields the
   pipeline's `ip_adapter_image_embeds`. Precomputed embeddings, rather than `ip_adapter_image`, because
   a diffusers pipeline holds one `image_encoder` while units may need different ones (ip-adapter_sdxl
   takes ViT-bigG, the vit-h and Plus files ViT-H), and because a batch cut into chunks (or retried one
   image at a time after running out of memory) would encode the image again for every call;
3. installs the adapters on the UNet as diffusers' `load_ip_adapter` does (its own conversion of the
   state dicts into `IPAdapterAttnProcessor2_0` on each cross-attention and a `MultiIPAdapterImageProjection`
   as `unet.encoder_hid_proj`), with each unit's weight as its scale;
4. and takes everything back on exit, however the block ends: the UNet's very processor objects (plain
   or fused), `encoder_hid_proj` and `config.encoder_hid_dim_type` as they were. Nothing else is touched:
   not the pipeline's `image_encoder`/`feature_extractor` components or config, not the dtype of the
   rest of the UNet (diffusers' `load_ip_adapter` calls `unet.to(dtype)` on the whole UNet, which would
   also cast PEFT's float32 LoRA weights of a float16 model). So a generation after the block is bit for
   bit the one before it. The ControlNet pipelines made with `from_pipe` share the UNet and take the
   same `ip_adapter_image_embeds`: the same block serves them. A UNet whose cross-attention processors
   are a hypernetwork's is refused (the IP-Adapter processors would replace them, silently).

The installed processors' weights are the held tensors themselves (diffusers' low-memory loading wraps
them without a copy): a request adds no device memory for them, only the projection's activations.

Weight and step range: a unit at weight 0, or with a step range that holds no step (start ≥ end), is not
installed at all (the image is the one without it, bit for bit: diffusers' processors skip an adapter at
scale 0, so that is also what it would give). The step range is a fraction of the steps the pipeline
runs, with the rule picserve's ControlNet units follow (diffusers' `control_guidance_start/end`,
engine/controlnet.py): step i of n is guided when i/n ≥ start and (i+1)/n ≤ end (`guided`). A1111's
sd-webui-controlnet guides when start ≤ i/n ≤ end: the same steps except at the end of a range that
does not fall on a step boundary. A unit's scale is its weight on its steps and 0 elsewhere, set with
`pipe.set_ip_adapter_scale` from a `callback_on_step_end` for the next step, diffusers' documented way to
change the scale while sampling (its `IPAdapterScaleCutoffCallback` does the same, and gives the same
image); those of step 0 by a one-shot forward pre-hook on the UNet, since they depend on the number of
steps the call runs, known only once it has started. `Applied.pipe_kwargs(callback)` gives a call's
arguments, with that callback chained before the engine's own.

Errors: a file that is not an IP-Adapter (or a FaceID one, which needs InsightFace), one made for another
cross-attention width or number of layers, an encoder folder that does not load, or one whose widths
are not what the adapter reads: `errors.ModelLoadError` naming the file. ipadapter_info.py (no torch)
tells the same from the shapes and config.json, for the server's checks at submit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from picserve import errors, ipadapter_info
from picserve.engine import memory

__all__ = ["DEFAULT_BUDGET", "Applied", "IPAdapters", "LoadedAdapter", "LoadedEncoder", "Reference", "guided"]

log = logging.getLogger(__name__)

#: bytes of adapters and encoders kept loaded. In float16 an SDXL adapter is 0.70 GB (plain, h94's
#: ip-adapter_sdxl: 351M parameters, almost all to_k_ip/to_v_ip) or 0.85 GB (Plus), the ViT-H encoder
#: 1.26 GB (632M), the ViT-bigG one 3.7 GB (1.84B); float32 doubles them. 4 GiB holds ViT-H with a few
#: adapters; the most recent entry always stays, whatever its size.
DEFAULT_BUDGET = 4 << 30

#: a pipeline's step-end callback: (pipe, step index, timestep, tensors) → tensors
StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Reference:
    """One IP-Adapter unit of a generation."""

    #: the IP-Adapter file (.safetensors, or a .bin/.pt state dict)
    adapter: Path
    #: the CLIP vision encoder folder it needs (config.json + weights; preprocessor_config.json optional)
    encoder: Path
    image: Image.Image
    weight: float = 1.0
    #: the step range, fractions of the steps run (`guided`)
    start: float = 0.0
    end: float = 1.0
    #: where the reference acts (white), at the generation's size; None: everywhere. diffusers'
    #: IP-Adapter attention masks (IPAdapterMaskProcessor): the reference's attention output is weighted
    #: by the mask, downsampled to each attention layer's size
    mask: Image.Image | None = None


@dataclass(frozen=True)
class LoadedAdapter:
    """An IP-Adapter file's tensors on a device, split as diffusers' loader wants them."""

    path: Path
    #: {"image_proj": {name: tensor}, "ip_adapter": {name: tensor}}, names without the part's prefix
    state: dict[str, dict[str, torch.Tensor]]
    info: ipadapter_info.Info
    nbytes: int


@dataclass(frozen=True)
class LoadedEncoder:
    """A CLIP vision encoder on a device, with its image processor."""

    path: Path
    model: Any  #: transformers' CLIPVisionModelWithProjection, in eval mode
    processor: Any  #: transformers' CLIPImageProcessor
    info: ipadapter_info.EncoderInfo
    nbytes: int


@dataclass(frozen=True)
class _Held:
    value: LoadedAdapter | LoadedEncoder
    version: tuple[Any, ...]


def _mask_tensor(mask: Image.Image | None) -> torch.Tensor | None:
    """A reference's mask as diffusers' attention processors take it: (1, 1, height, width), binarised."""
    if mask is None:
        return None
    from diffusers.image_processor import IPAdapterMaskProcessor

    tensor: torch.Tensor = IPAdapterMaskProcessor().preprocess(
        [mask.convert("L")], height=mask.height, width=mask.width
    )
    return tensor


def guided(step: int, steps: int, start: float, end: float) -> bool:
    """Whether step `step` (0-based) of `steps` is inside the range [start, end] (fractions of the steps):
    i/n ≥ start and (i+1)/n ≤ end, as diffusers' `control_guidance_start/end` and picserve's ControlNet
    units. [0, 1] guides every step; [0.5, 1] the second half; a range with start ≥ end none."""
    return step / steps >= start and (step + 1) / steps <= end


class Applied:
    """What a generation passes to the pipeline while `IPAdapters.applied` holds the adapters.

    `kwargs`: `{"ip_adapter_image_embeds": [...]}` (one tensor per installed unit: (2, 1, width) or
    (2, 1, tokens, width) with classifier-free guidance, the negative first; (1, …) without), or {} when
    no unit is installed. Each pipeline call passes `pipe_kwargs(callback)` instead, which also runs the
    step ranges.
    """

    def __init__(self, pipe: Any, embeds: list[torch.Tensor], references: Sequence[Reference]) -> None:
        self.pipe = pipe
        self.embeds = embeds
        self.references = list(references)
        #: whether some unit's range leaves steps out, so that the scales change while sampling
        self.scheduled = any(r.start > 0.0 or r.end < 1.0 for r in self.references)
        self._armed: Any = None  # the hook that sets step 0's scales, until the call's first UNet forward

    @property
    def kwargs(self) -> dict[str, Any]:
        if not self.embeds:
            return {}
        masks = [_mask_tensor(r.mask) for r in self.references]
        if all(m is None for m in masks):
            return {"ip_adapter_image_embeds": self.embeds}
        return {"ip_adapter_image_embeds": self.embeds, "cross_attention_kwargs": {"ip_adapter_masks": masks}}

    def scales(self, step: int, steps: int) -> list[float]:
        """Each installed unit's scale at `step` of `steps`: its weight where its range guides, else 0."""
        return [r.weight if guided(step, steps, r.start, r.end) else 0.0 for r in self.references]

    def pipe_kwargs(self, callback: StepEnd | None = None, pipe: Any = None) -> dict[str, Any]:
        """The arguments of one call of `pipe` (default: the pipeline given to `applied`; a ControlNet
        pipeline made from it with `from_pipe` shares its UNet): `kwargs`, and `callback_on_step_end`:
        `callback`, with the step ranges' callback chained before it where a range leaves steps out
        (absent when both are None).

        Where a range leaves steps out, the scales of step 0 depend on the number of steps the call runs
        (`pipe.num_timesteps`: fewer than asked for img2img, more with a second-order sampler), known only
        once the call has set its timesteps; so they are set by a one-shot forward pre-hook on the UNet at
        the call's first UNet forward, and those of step i+1 by the callback at the end of step i. Every
        call (a chunk of a batch, a retry after running out of memory) starts its schedule anew."""
        self._disarm()
        if not self.embeds:
            return {} if callback is None else {"callback_on_step_end": callback}
        if not self.scheduled:
            self._set([r.weight for r in self.references])
            return {**self.kwargs, **({} if callback is None else {"callback_on_step_end": callback})}
        running = self.pipe if pipe is None else pipe

        def first_step(_module: Any, _args: Any) -> None:
            self._disarm()
            self._set(self.scales(0, max(1, int(running.num_timesteps))))

        def step_end(step_pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            steps = max(1, int(step_pipe.num_timesteps))
            if step + 1 < steps:
                self._set(self.scales(step + 1, steps))
            return tensors if callback is None else callback(step_pipe, step, timestep, tensors)

        self._armed = self.pipe.unet.register_forward_pre_hook(first_step)
        return {**self.kwargs, "callback_on_step_end": step_end}

    def _set(self, scales: list[float]) -> None:
        self.pipe.set_ip_adapter_scale(scales)

    def _disarm(self) -> None:
        if self._armed is not None:
            self._armed.remove()
            self._armed = None


class IPAdapters:
    """IP-Adapter files and CLIP vision encoders a worker keeps loaded, and the block that applies them.

    Least recently used first out when the held bytes pass `budget` (DEFAULT_BUDGET: 4 GiB); entries the
    request at hand uses are never dropped for it, and the most recent always stays. An entry is keyed
    by its path, the device and the dtype (the UNet's), and is loaded again when its file (an adapter)
    or any file of its folder (an encoder) changed (mtime or size).
    """

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._held: OrderedDict[tuple[str, str, str, torch.dtype], _Held] = OrderedDict()
        self._lock = threading.Lock()

    # --- the cache --------------------------------------------------------------------------------
    def loaded(self, kind: str | None = None) -> list[str]:
        """The paths of the adapters and encoders held (`kind` "adapter" or "encoder": those only), least
        recently used first."""
        with self._lock:
            return [key[1] for key in self._held if kind in (None, key[0])]

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held (on their devices)."""
        with self._lock:
            return sum(held.value.nbytes for held in self._held.values())

    def clear(self) -> None:
        """Drop everything held (the device memory comes back once no generation uses it)."""
        with self._lock:
            self._held.clear()

    def adapter(self, path: Path, device: torch.device, dtype: torch.dtype, keep: Sequence[Path] = ()) -> LoadedAdapter:
        """The IP-Adapter file at `path`, its tensors on `device` in `dtype` (from the cache when held).
        ModelLoadError when it cannot be read or is not an IP-Adapter picserve runs."""
        value = self._get("adapter", Path(path), device, dtype, _load_adapter, keep)
        assert isinstance(value, LoadedAdapter)
        return value

    def encoder(self, path: Path, device: torch.device, dtype: torch.dtype, keep: Sequence[Path] = ()) -> LoadedEncoder:
        """The CLIP vision encoder in the folder `path`, on `device` in `dtype` (from the cache when held).
        ModelLoadError when it does not load as a CLIPVisionModelWithProjection."""
        value = self._get("encoder", Path(path), device, dtype, _load_encoder, keep)
        assert isinstance(value, LoadedEncoder)
        return value

    def _get(
        self,
        kind: str,
        path: Path,
        device: torch.device,
        dtype: torch.dtype,
        load: Callable[[Path, torch.device, torch.dtype], LoadedAdapter | LoadedEncoder],
        keep: Sequence[Path],
    ) -> LoadedAdapter | LoadedEncoder:
        key = (kind, str(path), str(torch.device(device)), dtype)
        version = _version(path, kind)
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.version == version:
                self._held.move_to_end(key)
                return held.value
            self._held.pop(key, None)  # changed on disk: the old one goes
        value = load(path, torch.device(device), dtype)  # outside the lock: it takes seconds for real files
        with self._lock:
            self._held[key] = _Held(value, version)
            kept = {k for k in self._held if k[1] in {str(p) for p in keep}} | {key}
            for old in list(self._held):
                if sum(h.value.nbytes for h in self._held.values()) <= self.budget:
                    break
                if old not in kept:
                    del self._held[old]
                    log.info(
                        "IP-Adapter cache: %s dropped (least recently used; budget %d MiB)", old[1], self.budget >> 20
                    )
        return value

    # --- one generation ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def applied(self, pipe: Any, references: Sequence[Reference], guidance_scale: float) -> Iterator[Applied]:
        """`references` on `pipe` (an SDXL pipeline: txt2img, img2img, inpaint, or a ControlNet one made
        with `from_pipe`) for the block; yields the `Applied` whose `pipe_kwargs` each call passes.
        `guidance_scale`: the generation's CFG scale (above 1: the embeddings carry the negative half,
        as the pipeline's classifier-free guidance splits them). The pipeline is as before on exit."""
        active = [r for r in references if r.weight != 0 and r.start < r.end]
        if not active:
            yield Applied(pipe, [], [])
            return
        unet = pipe.unet
        if unet.encoder_hid_proj is not None:
            raise errors.GenerationError(
                "this model's UNet already has an image projection (encoder_hid_proj): IP-Adapters cannot be added"
            )
        foreign = {type(unet.attn_processors[n]).__name__ for n in _cross_attentions(unet)} - _OWN_PROCESSORS
        if foreign:  # a hypernetwork's: the IP-Adapter processors would replace it, silently
            raise errors.GenerationError(
                f"IP-Adapters cannot be combined with what replaced this UNet's cross-attention processors "
                f"({', '.join(sorted(foreign))}: a hypernetwork's); submit the task without one of them"
            )
        device, dtype = unet.device, unet.dtype
        cfg = guidance_scale > 1 and unet.config.time_cond_proj_dim is None
        paths = [p for r in active for p in (r.adapter, r.encoder)]
        with torch.inference_mode(False), torch.no_grad():  # the cache's tensors stay usable in any mode
            adapters = [self.adapter(r.adapter, device, dtype, keep=paths) for r in active]
            layers = _cross_attentions(unet)
            for adapter in adapters:
                problem = ipadapter_info.misfit(adapter.info, unet.config.cross_attention_dim, len(layers))
                if problem:
                    raise errors.ModelLoadError(f"IP-Adapter {adapter.path.name}: {problem}")
            encoders = [self.encoder(r.encoder, device, dtype, keep=paths) for r in active]
            for adapter, encoder in zip(adapters, encoders, strict=True):
                problem = ipadapter_info.encoder_misfit(adapter.info, encoder.info)
                if problem:
                    raise errors.ModelLoadError(
                        f"IP-Adapter {adapter.path.name} with the image encoder {encoder.path.name}: {problem}"
                    )
            embeds = [
                _embed(encoder, r.image, adapter.info.encoder_output == "hidden_states", cfg)
                for r, adapter, encoder in zip(active, adapters, encoders, strict=True)
            ]
            saved = _install(unet, adapters)
        applied = Applied(pipe, embeds, active)
        try:
            applied._set([r.weight for r in active])
            yield applied
        finally:
            applied._disarm()
            _restore(unet, saved)


# --- loading --------------------------------------------------------------------------------------
def _version(path: Path, kind: str) -> tuple[Any, ...]:
    """(mtime_ns, size) of a file; of every file of a folder, by name."""
    try:
        if kind == "encoder":
            return tuple(
                sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file())
            )
        stat = path.stat()
    except OSError as exc:
        what = "image encoder" if kind == "encoder" else "IP-Adapter"
        raise errors.ModelLoadError(f"{what} {path.name}: cannot be read ({exc})") from None
    return (stat.st_mtime_ns, stat.st_size)


def _load_adapter(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedAdapter:
    """An IP-Adapter file's tensors, split into its two parts, on `device` in `dtype`."""
    try:
        flat = _read_tensors(path)
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(f"IP-Adapter {path.name}: cannot be read ({reason})") from exc
    info = ipadapter_info.inspect({k: tuple(v.shape) for k, v in flat.items()})
    if info.problem:
        raise errors.ModelLoadError(f"IP-Adapter {path.name}: {info.problem}")
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        part, _, name = key.partition(".")
        if part in state:
            converted = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor.to(device)
            state[part][name] = converted
    nbytes = sum(t.numel() * t.element_size() for part in state.values() for t in part.values())
    log.info("IP-Adapter %s loaded: %s, %.1f MiB on %s", path.name, info.kind, nbytes / 2**20, device)
    return LoadedAdapter(path, state, info, nbytes)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict file's tensors by flat name ("image_proj.proj.weight"): safetensors, or a torch pickle
    (h94's .bin: two nested dicts) loaded with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix.rstrip(".")] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")

    walk(loaded, "")
    return flat


def _load_encoder(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedEncoder:
    """A CLIP vision encoder folder on `device` in `dtype`, and its image processor: the folder's
    preprocessor_config.json, or (h94's folders have none) the one diffusers' `load_ip_adapter` builds,
    CLIP's normalisation at the encoder's image size."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    info = ipadapter_info.read_encoder(path)
    if info.problem:
        raise errors.ModelLoadError(f"image encoder {path.name}: {info.problem}")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(path, dtype=dtype, local_files_only=True)
        model = model.to(device).eval()
        if (path / "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        else:
            processor = CLIPImageProcessor(size=info.image_size, crop_size=info.image_size)
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(
            f"image encoder {path.name}: it does not load as a CLIP vision encoder ({reason})"
        ) from exc
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    log.info(
        "image encoder %s loaded: %s, %.1f MiB on %s", path.name, info.name or "CLIP vision", nbytes / 2**20, device
    )
    return LoadedEncoder(path, model, processor, info, nbytes)


def _embed(encoder: LoadedEncoder, image: Image.Image, hidden_states: bool, cfg: bool) -> torch.Tensor:
    """A reference image's embeddings as the pipeline's `ip_adapter_image_embeds` entry, computed as
    diffusers' `encode_image` and `prepare_ip_adapter_image_embeds` compute them from `ip_adapter_image`
    (so the image is the same bit for bit): (1, 1, width) image_embeds or (1, 1, tokens, width) hidden
    states, with the negative (zero embeddings, or the hidden states of a zero image) first under CFG."""
    model = encoder.model
    pixels = encoder.processor(image, return_tensors="pt").pixel_values
    pixels = pixels.to(device=model.device, dtype=next(model.parameters()).dtype)
    if hidden_states:
        positive = model(pixels, output_hidden_states=True).hidden_states[-2]
        negative = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2] if cfg else None
    else:
        positive = model(pixels).image_embeds
        negative = torch.zeros_like(positive) if cfg else None
    return positive[None] if negative is None else torch.cat([negative[None], positive[None]])


# --- the UNet -------------------------------------------------------------------------------------
#: cross-attention processors an IP-Adapter processor may stand in for: diffusers' own, plain or fused
#: (the IP-Adapter processor computes the same attention with the unfused to_k/to_v diffusers keeps)
_OWN_PROCESSORS = frozenset({"AttnProcessor", "AttnProcessor2_0", "FusedAttnProcessor2_0", "XFormersAttnProcessor"})


@dataclass(frozen=True)
class _Saved:
    processors: dict[str, Any]
    encoder_hid_proj: Any
    #: whether `encoder_hid_proj` was a registered submodule entry (rather than a plain attribute)
    registered: bool
    hid_dim_type: Any


def _cross_attentions(unet: Any) -> list[str]:
    """The processor names that get an IP-Adapter processor, as diffusers picks them (each cross-attention)."""
    return [n for n in unet.attn_processors if not n.endswith("attn1.processor") and "motion_modules" not in n]


def _install(unet: Any, adapters: Sequence[LoadedAdapter]) -> _Saved:
    """The adapters' processors on the UNet's cross-attentions and their projection as its
    `encoder_hid_proj` (diffusers' `_load_ip_adapter_weights`, without its `unet.to(dtype)`); what to
    restore. Nothing is changed when building them fails."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection
    from diffusers.utils import is_accelerate_available

    saved = _Saved(
        processors=dict(unet.attn_processors),
        encoder_hid_proj=unet.encoder_hid_proj,
        registered="encoder_hid_proj" in unet._modules,
        hid_dim_type=unet.config.encoder_hid_dim_type,
    )
    states = [a.state for a in adapters]
    # low_cpu_mem_usage: modules built empty and filled with the held tensors, not initialised at random
    # first (seconds for an SDXL adapter's 351M parameters on a CPU)
    lean = is_accelerate_available()
    try:
        built = unet._convert_ip_adapter_attn_to_diffusers(states, low_cpu_mem_usage=lean)
        projections = [
            unet._convert_ip_adapter_image_proj_to_diffusers(s["image_proj"], low_cpu_mem_usage=lean) for s in states
        ]
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise
        names = ", ".join(a.path.name for a in adapters)
        raise errors.ModelLoadError(f"IP-Adapter {names}: its tensors do not fit this model's UNet ({exc})") from exc
    crossing = set(_cross_attentions(unet))
    processors = {
        name: built[name].to(device=unet.device, dtype=unet.dtype) if name in crossing else current
        for name, current in saved.processors.items()
    }
    projection = MultiIPAdapterImageProjection(projections).to(device=unet.device, dtype=unet.dtype)
    try:
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # what the UNet's forward reads (an attribute)
    except BaseException:
        _restore(unet, saved)
        raise
    return saved


def _restore(unet: Any, saved: _Saved) -> None:
    """The UNet as `_install` found it: the projection first (a Plus Resampler has attention processors
    of its own, which `set_attn_processor` would count), then the very processor objects it had."""
    if saved.registered or saved.encoder_hid_proj is not None:
        unet.encoder_hid_proj = saved.encoder_hid_proj
    else:
        unet._modules.pop("encoder_hid_proj", None)
        unet.__dict__["encoder_hid_proj"] = None
    unet.config.encoder_hid_dim_type = saved.hid_dim_type
    unet.set_attn_processor(dict(saved.processors))

"""Engine speed switches for CUDA: channels_last, fused QKV projections, a compiled UNet (with LoRA slots).

Each switch is a field of `Acceleration` (the worker builds it from `PICSERVE_*`, config.py). The loader
applies them to every main model it loads (`prepare`); the worker compiles at start (`warm_up`), so the
first request does not pay for compilation.

**Defaults: all off.** A switch is to be turned on by default only where bench/sdxl.py on a CUDA GPU
shows that it wins and that images stay equal to eager's within fp16 tolerance. No GPU figures of ours
exist yet (docs/performance.md), and on the CPU none pays (../shared/notes/sdxl-on-cpu.md §6). The
published gains to check are small: on an A100, compile + channels_last 3.31 → 2.54 s, then fused QKV
2.52 s (diffusion-fast, anchors-2026.md A1).

**channels_last**: the UNet's and the VAE's weights in NHWC, which cuDNN's convolutions prefer.

**Fused QKV** (`fuse_qkv_projections`): one matmul for q, k and v of each self-attention (k and v of
each cross-attention), in the UNet and the VAE. The fused processor reads a copy of the weights made
when fusing: it would not see a LoRA (a PEFT adapter on to_q/to_k/to_v, or a LyCORIS patch of their
weights). So lora/apply.py unfuses the UNet (`set_fused(pipe, False)`, diffusers' `unfuse_qkv_projections`)
before it applies a request's LoRAs, and fuses it again, from the base weights restored, for a request
without any. Fused QKV therefore speeds up only the requests without LoRAs. diffusers keeps the unfused
layers beside the fused copy: the UNet's q/k/v weights are held twice.

**Compiled UNet, bucketed sizes** (`compile_mode`). The UNet's forward becomes a dispatcher (the module
stays the same object, so diffusers and PEFT see the UNet they know): a call goes to
``torch.compile(unet.forward, dynamic=False)`` when its latent size is one of `compile_sizes` (÷ 8), its
batch is 2 or more (classifier-free guidance doubles it: every request with a CFG scale above 1), and
the UNet is in a state compiled for (its attention processors diffusers' own, fused or not; zero
padding). Anything else runs the eager forward: another size, a batch of 1 (CFG scale ≤ 1), a
hypernetwork's processors, seamless tiling's circular padding. Within a size, the batch and the prompt
length (77 tokens per chunk of a long prompt) are marked dynamic, and the timestep is handed over as a
float32 tensor whatever the sampler's dtype, so one graph serves them all. That bounds the graphs to
len(compile_sizes) per model (twice that with fused QKV: fused and unfused), all compiled by `warm_up`;
dynamo's recompile limit is raised to hold exactly those, and nothing compiles afterwards
(tests/engine/test_acceleration.py proves it with ``torch.compiler.set_stance("fail_on_recompile")``).
The mode ("default", "reduce-overhead" = CUDA graphs, "max-autotune") is to be chosen by measurement.

**LoRA hot-swap slots** (`lora_slots`, `lora_max_rank`). Loading a PEFT adapter changes the UNet's
modules, and with them the compiled graph. With compile on, `prepare` gives the UNet `lora_slots` PEFT
adapters of rank `lora_max_rank` on every linear layer, before compiling (they are part of the graph):
lora/slots.py's `LoraSlots`, into which a request's LoRAs are hot-swapped and weighted without changing
the graph (how, and what it costs: its docstring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from picserve.engine.lora.slots import LoraSlots

__all__ = [
    "COMPILE_MODES",
    "SDXL_SIZES",
    "Acceleration",
    "Prepared",
    "compiled",
    "parse_sizes",
    "prepare",
    "prepared",
    "set_fused",
    "warm_up",
]

log = logging.getLogger(__name__)

#: SDXL's standard sizes (width, height), about one megapixel each: the sizes it was trained at
SDXL_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)
#: torch.compile modes (inductor); "max-autotune-no-cudagraphs" is max-autotune without CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the attribute of a UNet that holds what `prepare` did to it
_ATTRIBUTE = "_picserve_acceleration"


@dataclass(frozen=True)
class Acceleration:
    """The engine's speed switches; `Acceleration()` is everything off (see the module docstring).

    Example: ``Acceleration(channels_last=True, compile_mode="max-autotune", compile_sizes=((1024, 1024),))``.
    """

    #: UNet and VAE weights in channels_last (NHWC) memory format
    channels_last: bool = False
    #: fused q/k/v projections in the UNet and the VAE (the UNet unfused while a request's LoRAs are applied)
    fuse_qkv: bool = False
    #: torch.compile mode of the UNet (one of COMPILE_MODES), or None: no compilation
    compile_mode: str | None = None
    #: torch.compile backend; "inductor" on a GPU, "eager" or "aot_eager" in tests (no code generated)
    compile_backend: str = "inductor"
    #: output sizes (width, height) in pixels that get a compiled UNet graph; other sizes run eager
    compile_sizes: tuple[tuple[int, int], ...] = SDXL_SIZES
    #: rank of the LoRA hot-swap slots: a LoRA of a higher rank cannot be applied with compile on
    lora_max_rank: int = 64
    #: LoRAs (with a UNet part) one request may apply with compile on; 0: no LoRA slots
    lora_slots: int = 3

    def __post_init__(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)} (or off)")
        for width, height in self.compile_sizes:
            if width <= 0 or height <= 0 or width % 8 or height % 8:
                raise ValueError(f"compile size {width}x{height} is not a positive multiple of 8 on both sides")
        if not 0 <= self.lora_slots <= 99:
            raise ValueError(f"LoRA slots {self.lora_slots} is not between 0 and 99")
        if self.lora_max_rank < 1:
            raise ValueError(f"LoRA max rank {self.lora_max_rank} is not 1 or more")

    @property
    def compiles(self) -> bool:
        return self.compile_mode is not None

    @classmethod
    def parse(
        cls,
        *,
        channels_last: bool = False,
        fuse_qkv: bool = False,
        compile: str = "off",
        compile_sizes: str | None = None,
        lora_max_rank: int = 64,
        lora_slots: int = 3,
    ) -> Acceleration:
        """The switches as the settings spell them: `compile` "off" (or "") or a mode, `compile_sizes`
        "1024x1024,1152x896" (width x height; None or "" = SDXL_SIZES). ValueError names what is wrong."""
        mode = compile.strip().lower()
        return cls(
            channels_last=channels_last,
            fuse_qkv=fuse_qkv,
            compile_mode=None if mode in ("", "off", "none", "false", "0") else mode,
            compile_sizes=parse_sizes(compile_sizes) if compile_sizes and compile_sizes.strip() else SDXL_SIZES,
            lora_max_rank=lora_max_rank,
            lora_slots=lora_slots,
        )


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """ "1024x1024, 1152x896" → ((1024, 1024), (1152, 896)): width x height, comma-separated."""
    sizes = []
    for item in text.split(","):
        width, separator, height = item.strip().lower().partition("x")
        if not separator or not width.strip().isdigit() or not height.strip().isdigit():
            raise ValueError(f"compile size {item.strip()!r} is not WIDTHxHEIGHT (e.g. 1024x1024)")
        sizes.append((int(width), int(height)))
    return tuple(dict.fromkeys(sizes))


class Prepared:
    """What `prepare` did to one pipeline's UNet (kept on the UNet, so it goes with it)."""

    def __init__(self, options: Acceleration) -> None:
        self.options = options
        #: whether the UNet's q/k/v projections are fused now (only ever True with options.fuse_qkv)
        self.fused = False
        #: the hot-swap slots (compile on, lora_slots > 0), else None
        self.slots: LoraSlots | None = None
        #: the forward dispatcher (compile on), else None
        self.dispatch: _Dispatch | None = None


def prepared(pipe: Any) -> Prepared | None:
    """What `prepare` did to `pipe`'s UNet, or None (a pipeline prepare never saw runs as diffusers made it)."""
    state = getattr(pipe.unet, _ATTRIBUTE, None)
    return state if isinstance(state, Prepared) else None


def compiled(pipe: Any) -> bool:
    """Whether `pipe`'s UNet runs compiled (for the compile sizes)."""
    state = prepared(pipe)
    return state is not None and state.dispatch is not None


def prepare(pipe: Any, options: Acceleration) -> None:
    """Apply `options` to a freshly loaded SDXL pipeline, in place (a second call does nothing).

    In order: channels_last; the LoRA slots (before compiling: they are part of the graph); fused QKV;
    the compiled forward. Compilation itself happens at the first call of each size, or in `warm_up`.
    """
    unet = pipe.unet
    if prepared(pipe) is not None:
        return
    state = Prepared(options)
    if options.channels_last:
        unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.compiles and options.lora_slots:
        state.slots = LoraSlots(unet, options.lora_slots, options.lora_max_rank)
    states = {_processor_state(unet)}
    if options.fuse_qkv:
        pipe.vae.fuse_qkv_projections()  # no LoRA reaches the VAE: it stays fused
        unet.fuse_qkv_projections()
        state.fused = True
        states.add(_processor_state(unet))
    if options.compiles:
        state.dispatch = _Dispatch(unet, options, frozenset(states))
        unet.forward = state.dispatch
        _make_room_for_graphs(len(options.compile_sizes) * len(states))
    setattr(unet, _ATTRIBUTE, state)


def set_fused(pipe: Any, fused: bool) -> None:
    """The UNet's q/k/v projections fused, or not; nothing unless `prepare` fused them. Fusing copies
    the current to_q/to_k/to_v weights: call it with the base weights in place (no LoRA patched in)."""
    state = prepared(pipe)
    if state is None or not state.options.fuse_qkv or state.fused == fused:
        return
    if fused:
        pipe.unet.fuse_qkv_projections()
    else:
        pipe.unet.unfuse_qkv_projections()
    state.fused = fused


def warm_up(pipe: Any, sizes: Sequence[tuple[int, int]] | None = None, calls: int = 3) -> dict[tuple[int, int], float]:
    """Compile now what requests will run: `calls` UNet calls per size of `sizes` (default: the compile
    sizes) with the inputs a request with CFG gives it (a batch of 2, one 77-token prompt chunk), and
    with fused QKV once fused and once unfused (the state of requests with LoRAs). Returns the seconds
    each size took; {} when the UNet is not compiled.

    Call it at worker start once the model is loaded (any model: txt2img or inpainting UNet): a first
    request then finds its graphs ready. A model loaded later compiles at its first request of each size.
    """
    state = prepared(pipe)
    if state is None or state.dispatch is None:
        return {}
    sizes = tuple(sizes if sizes is not None else state.options.compile_sizes)
    seconds: dict[tuple[int, int], float] = dict.fromkeys(sizes, 0.0)
    for fused in (True, False) if state.options.fuse_qkv else (state.fused,):
        set_fused(pipe, fused)  # outside inference mode: the fused layers are parameters like the others
        for width, height in sizes:
            start = time.perf_counter()
            with torch.inference_mode():  # as Engine.generate runs: dynamo guards on the grad mode
                inputs = _unet_inputs(pipe.unet, width, height)
                for _ in range(calls):
                    pipe.unet(**inputs)
            seconds[(width, height)] += time.perf_counter() - start
            log.info(
                "compiled the UNet for %dx%d (fused QKV: %s) in %.1f s", width, height, fused, seconds[(width, height)]
            )
    set_fused(pipe, True)  # the state of a request without LoRAs
    return seconds


def _unet_inputs(unet: Any, width: int, height: int) -> dict[str, Any]:
    """What the SDXL pipelines pass the UNet at each step for one image with CFG (their shapes, dtypes,
    devices and keywords; zeros for values)."""
    config, options = unet.config, {"device": unet.device, "dtype": unet.dtype}
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding, 6 size/crop conditions
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.zeros(2, pooled, **options), "time_ids": torch.zeros(2, 6, **options)}
    return {
        "sample": torch.zeros(2, config.in_channels, height // 8, width // 8, **options),
        "timestep": torch.tensor(999.0, device=unet.device),
        "encoder_hidden_states": torch.zeros(2, 77, config.cross_attention_dim, **options),
        "timestep_cond": None,
        "cross_attention_kwargs": None,
        "added_cond_kwargs": added,
        "return_dict": False,
    }


# --- the compiled forward ------------------------------------------------------------------------------
#: graphs the prepared UNets may hold in all (dynamo's recompile limit is per code object: the UNet class's
#: forward, shared by every loaded UNet)
_graphs = 0


def _make_room_for_graphs(count: int) -> None:
    """Raise dynamo's recompile limits to hold `count` more graphs of UNet2DConditionModel.forward: past
    the limit dynamo would silently run eager for good."""
    global _graphs
    _graphs += count
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, _graphs + 2)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * _graphs)


def _attention(unet: nn.Module, name: str) -> Any:
    """The first attention module called `name` (attn1, attn2) in `unet`, or None."""
    return next((m for n, m in unet.named_modules() if n.endswith("." + name)), None)


def _processor_state(unet: nn.Module) -> tuple[type, ...]:
    """The attention processor types of the first self- and cross-attention: what fusing, unfusing and
    hypernetworks change (each sets them on every layer)."""
    return tuple(type(getattr(_attention(unet, name), "processor", None)) for name in ("attn1", "attn2"))


#: UNet2DConditionModel.forward's keyword arguments a compiled call takes (the others must be None)
_COMPILED_KWARGS = frozenset({"added_cond_kwargs", "return_dict"})


class _Dispatch:
    """The UNet's forward: the compiled one for the compiled sizes and states, the eager one otherwise
    (see the module docstring). `compiled_calls` and `eager_calls` count which ran."""

    def __init__(self, unet: nn.Module, options: Acceleration, states: frozenset[tuple[type, ...]]) -> None:
        self.eager = unet.forward  # the class's forward, bound to the UNet
        kwargs: dict[str, Any] = {"backend": options.compile_backend, "dynamic": False, "fullgraph": False}
        if options.compile_backend == "inductor":
            kwargs["mode"] = options.compile_mode
        self.compiled = torch.compile(self.eager, **kwargs)
        #: latent (height, width) of the compile sizes
        self.latent_sizes = frozenset((height // 8, width // 8) for width, height in options.compile_sizes)
        self.states = states
        self._attn1, self._attn2 = _attention(unet, "attn1"), _attention(unet, "attn2")
        self._conv_in: Any = getattr(unet, "conv_in", None)
        self.compiled_calls = 0
        self.eager_calls = 0

    def state(self) -> tuple[type, ...]:
        return tuple(type(getattr(module, "processor", None)) for module in (self._attn1, self._attn2))

    def takes(self, sample: torch.Tensor, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether a call goes to the compiled forward."""
        return (
            not args
            and sample.ndim == 4
            and sample.shape[0] >= 2  # a batch of 1 would be specialised: a graph of its own
            and (sample.shape[-2], sample.shape[-1]) in self.latent_sizes
            and all(value is None for key, value in kwargs.items() if key not in _COMPILED_KWARGS)
            and getattr(self._conv_in, "padding_mode", "zeros") == "zeros"  # seamless tiling: circular
            and self.state() in self.states
        )

    def __call__(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if not self.takes(sample, args, kwargs):
            self.eager_calls += 1
            return self.eager(sample, timestep, encoder_hidden_states, *args, **kwargs)
        self.compiled_calls += 1
        # One graph per size: the batch and the prompt's length vary within it.
        torch._dynamo.maybe_mark_dynamic(sample, 0)
        if isinstance(encoder_hidden_states, torch.Tensor):
            torch._dynamo.maybe_mark_dynamic(encoder_hidden_states, 0)
            torch._dynamo.maybe_mark_dynamic(encoder_hidden_states, 1)
        for value in (kwargs.get("added_cond_kwargs") or {}).values():
            if isinstance(value, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(value, 0)
        # Samplers give int64 or float32 timesteps (or a Python number, which dynamo would bake in): the
        # UNet turns them into float32 first thing (get_timestep_embedding), so this changes nothing.
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device)
        return self.compiled(sample, timestep, encoder_hidden_states, **kwargs)

"""ControlNet and IP-Adapter cost on full-size SDXL: seconds per denoising step, extra parameters, peak memory.

    .venv/bin/python bench/controlnet.py                  # CUDA: 1024², fp16, median of 3; CPU: 512², fp32, 1 pass
    .venv/bin/python bench/controlnet.py --size 256 --cases unet controlnet       # a quick run
    .venv/bin/python bench/controlnet.py --cases unet ip_adapter image_encoder --out cn.json

Every model is the full-size architecture with random weights (time and memory follow shapes, not values;
nothing is downloaded): SDXL base's UNet from the config picserve ships (engine/sdxl_base.py), and beside it:

- `unet`: the plain UNet step, the baseline;
- `controlnet`: one ControlNet unit, diffusers' `ControlNetModel.from_unet(unet)` (a full SDXL ControlNet,
  as diffusers/controlnet-*-sdxl-1.0: the UNet's encoder and middle block copied, ≈ 1.25 B parameters);
  a step is its forward and the UNet's forward with its residuals;
- `controlnet_x3`: three units, `MultiControlNetModel` of three such ControlNets (three forwards, their
  residuals summed, then the UNet). Where three separate copies do not fit beside the UNet (`--share-units
  auto`: the device's available memory; CPU: /proc/meminfo's MemAvailable), the three units are one
  ControlNet used three times: the same compute, the weights of one in memory (the table says so; the
  parameter column counts three);
- `union`: a ControlNet-Union (`ControlNetUnionModel`, xinsir's ProMax layout: 8 control types,
  num_trans_channel / num_proj_channel = the UNet's block_out_channels[0]) with one control image;
- `ip_adapter`: the UNet with an SDXL IP-Adapter Plus (ip-adapter-plus_sdxl_vit-h's shapes: a 4-layer
  Resampler of 16 queries, 1280 wide, from ViT-H's 257×1280 hidden states to 2048, and to_k_ip / to_v_ip
  on each of the 70 cross-attentions), its original-format state dict made at random and loaded with
  `unet._load_ip_adapter_weights` (the loader behind `load_ip_adapter`), diffusers' IP-Adapter attention
  processors at scale 1; the Resampler runs in every step, as in the pipelines;
- `image_encoder`: the one-off cost per reference image: CLIP ViT-H/14's vision model (`CLIPVisionModel
  WithProjection`, 632 M parameters) at random init, encoding the image and a zero image (the negative)
  for their penultimate hidden states, as diffusers' `encode_image` does for a Plus adapter.

Each step is one forward at batch 2 (classifier-free guidance) under inference mode, at --size² (latents
--size/8), timed as the median of --repeat passes after --warmup passes (torch.cuda.synchronize around
each on CUDA); ControlNet steps also give the ControlNet and UNet parts apart. The baseline runs again
after the other cases (--repeat passes more, its median over both: a shared machine's slow spell at the
start would otherwise set every ratio). FLOPs of each step are counted first, on the meta device (torch's
FlopCounterMode, no weights, seconds; `--flops-only` stops there): the ratio no load moves. The defaults
fit the device: on CUDA 1024² and 3 passes; on the CPU 512² and 1 pass, every case in about 7 minutes
on 2 cores (a 1024² UNet step alone takes 85 s there, 180 s with other jobs running: all cases at 1024²,
25 minutes or more).
The dtype is the engine's (`--dtype`, default auto: `loader.resolve_dtype`, fp16 on CUDA, fp32 on the
CPU). Memory: the parameters each case adds, in bytes at that dtype, and the peak while its passes ran,
weights included: on CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on the CPU
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after a heap trim), so "extra" is the
peak less the baseline's. Each row also records the load average as it ended (others sharing the cores).

Writes `--out` (JSON, every figure) when given and prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import picserve  # noqa: F401  (first: the torchvision shim diffusers needs on the CPU build of torch)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import reset_peak, status  # bench/procstat.py: /proc/self memory figures

CASES = ["unet", "controlnet", "controlnet_x3", "union", "ip_adapter", "image_encoder"]
#: the cases run with the IP-Adapter loaded (last)
IP_CASES = ("ip_adapter", "image_encoder")
#: what each case is, for the table
LABELS = {
    "unet": "UNet step (baseline)",
    "controlnet": "+ 1 ControlNet",
    "controlnet_x3": "+ 3 ControlNets (MultiControlNetModel)",
    "union": "+ ControlNet-Union (1 control image)",
    "ip_adapter": "+ IP-Adapter Plus (ViT-H)",
    "image_encoder": "image encoder, once per reference image (CLIP ViT-H)",
}
#: ControlNet-Union ProMax's control types (openpose, depth, softedge, canny, normal, segment, tile, repaint)
UNION_TYPES = 8
#: ViT-H/14's vision tower (laion/CLIP-ViT-H-14, the image encoder of the "vit-h" IP-Adapters)
VIT_H: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
#: IP-Adapter Plus SDXL's Resampler (ip-adapter-plus_sdxl_vit-h): width, depth, heads of 64, queries
RESAMPLER: dict[str, int] = {"width": 1280, "depth": 4, "heads": 20, "queries": 16, "ffn": 4}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _available(device: torch.device) -> int:
    """Bytes the device can still take: CUDA's free memory, the CPU's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def release(device: torch.device) -> None:
    """Free what was dropped: Python's garbage, CUDA's cache, glibc's free heap (back to the OS)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform == "linux":
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak(device: torch.device, out: dict[str, Any]) -> Iterator[None]:
    """The memory in use when the block begins (weights) and its peak inside, in bytes, into `out`."""
    release(device)
    if device.type == "cuda":
        sync(device)
        out["memory_before_bytes"] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        sync(device)
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        out["memory_before_bytes"] = reset_peak()
        yield
        out["peak_bytes"] = status("VmHWM")


def parameter_bytes(*modules: torch.nn.Module) -> int:
    """The bytes of the distinct parameters and buffers of `modules`."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def build_unet(device: torch.device, dtype: torch.dtype) -> Any:
    """SDXL base's UNet from picserve's config, random weights, on `device` in `dtype`."""
    from diffusers import UNet2DConditionModel

    from picserve.engine import sdxl_base

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        config = UNet2DConditionModel.load_config(sdxl_base.config_dir(Path(cache)) / "unet")
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.to(dtype=dtype).eval()


def build_controlnet(unet: Any) -> Any:
    """A full SDXL ControlNet made from `unet` (diffusers' `from_unet`: its encoder and middle copied)."""
    from diffusers import ControlNetModel

    with torch.device(unet.device):
        controlnet = ControlNetModel.from_unet(unet)
    return controlnet.to(dtype=unet.dtype).eval()


def build_union(unet: Any) -> Any:
    """A ControlNet-Union fitted to `unet`: `from_unet`'s config (taken on the meta device, no weights), with
    ProMax's 8 control types and num_trans_channel / num_proj_channel = block_out_channels[0] (`from_unet`
    keeps the defaults, 320: right for SDXL, wrong for any other width)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetUnionModel

    with init_empty_weights():
        config = dict(ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False).config)
    config.pop("_use_default_values", None)  # else from_config takes the defaults of the keys it names back
    channels = unet.config.block_out_channels[0]
    config.update(num_control_type=UNION_TYPES, num_trans_channel=channels, num_proj_channel=channels)
    with torch.device(unet.device):
        union = ControlNetUnionModel.from_config(config)
    return union.to(dtype=unet.dtype).eval()


def ip_adapter_state(unet: Any, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """An SDXL IP-Adapter Plus (ViT-H) in the original file's layout, random values, the real shapes:
    `image_proj` (the Resampler) and `ip_adapter` (to_k_ip / to_v_ip of each cross-attention, numbered
    1, 3, 5, … in the UNet's processor order, as the loader reads them)."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape: int) -> torch.Tensor:
        if unet.device.type == "meta":  # shapes only (the FLOP count)
            return torch.empty(*shape, device="meta", dtype=unet.dtype)
        return (torch.randn(*shape, generator=generator) * 0.02).to(unet.dtype)

    width, embed, out = RESAMPLER["width"], VIT_H["hidden_size"], unet.config.cross_attention_dim
    proj: dict[str, torch.Tensor] = {
        "latents": tensor(1, RESAMPLER["queries"], width),
        "proj_in.weight": tensor(width, embed),
        "proj_in.bias": tensor(width),
        "proj_out.weight": tensor(out, width),
        "proj_out.bias": tensor(out),
        "norm_out.weight": tensor(out),
        "norm_out.bias": tensor(out),
    }
    inner = RESAMPLER["heads"] * 64
    for i in range(RESAMPLER["depth"]):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = tensor(width)
            proj[f"layers.{i}.0.{norm}.bias"] = tensor(width)
        proj[f"layers.{i}.0.to_q.weight"] = tensor(inner, width)
        proj[f"layers.{i}.0.to_kv.weight"] = tensor(2 * inner, width)
        proj[f"layers.{i}.0.to_out.weight"] = tensor(width, inner)
        proj[f"layers.{i}.1.0.weight"] = tensor(width)
        proj[f"layers.{i}.1.0.bias"] = tensor(width)
        proj[f"layers.{i}.1.1.weight"] = tensor(width * RESAMPLER["ffn"], width)
        proj[f"layers.{i}.1.3.weight"] = tensor(width, width * RESAMPLER["ffn"])
    attn: dict[str, torch.Tensor] = {}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0]
        channels = unet.config.block_out_channels
        if block == "mid_block":
            hidden = channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        attn[f"{key}.to_k_ip.weight"] = tensor(hidden, out)
        attn[f"{key}.to_v_ip.weight"] = tensor(hidden, out)
        key += 2
    return {"image_proj": proj, "ip_adapter": attn}


def build_image_encoder(device: torch.device, dtype: torch.dtype) -> Any:
    """CLIP ViT-H/14's vision model with its projection, random init."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H))
    return encoder.to(dtype=dtype).eval()


def inputs(device: torch.device, dtype: torch.dtype, size: int) -> dict[str, Any]:
    """A step's inputs at batch 2 (the CFG pair): latents, prompt embeddings, SDXL's added conditions."""
    generator = torch.Generator().manual_seed(1)
    latent = size // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    return {
        "sample": randn(2, 4, latent, latent),
        "timestep": torch.tensor(500.0, device=device),
        "encoder_hidden_states": randn(2, 77, 2048),
        "added_cond_kwargs": {
            "text_embeds": randn(2, 1280),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        },
    }


def control_image(device: torch.device, dtype: torch.dtype, size: int) -> torch.Tensor:
    """A control map as the pipelines pass it: size² RGB in [0, 1], repeated for the CFG pair."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    return image.repeat(2, 1, 1, 1).to(device=device, dtype=dtype)


def timed(device: torch.device, step: Callable[[], dict[str, float]], warmup: int, repeat: int) -> dict[str, Any]:
    """`step` run `warmup` times, then `repeat` times: the median of each of its parts and of the whole."""
    for _ in range(warmup):
        step()
    runs = [step() for _ in range(repeat)]
    figures: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    figures["step_s_each"] = [round(r["step_s"], 3) for r in runs]
    return figures


def unet_step(unet: Any, x: dict[str, Any], **extra: Any) -> dict[str, float]:
    device = x["sample"].device
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        unet(**x, **extra, return_dict=False)
    sync(device)
    return {"step_s": time.perf_counter() - start}


def controlnet_step(controlnet: Any, unet: Any, x: dict[str, Any], **control: Any) -> dict[str, float]:
    """A ControlNet step as the pipelines run it: the control model(s), then the UNet with the residuals."""
    device = x["sample"].device
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        down, mid = controlnet(**x, **control, guess_mode=False, return_dict=False)
        sync(device)
        middle = time.perf_counter()
        unet(**x, down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)
    sync(device)
    end = time.perf_counter()
    return {"step_s": end - start, "control_s": middle - start, "unet_s": end - middle}


def encoder_pass(encoder: Any, image: torch.Tensor) -> dict[str, float]:
    """diffusers' `encode_image` for a Plus adapter: the image's and a zero image's penultimate hidden states."""
    sync(image.device)
    start = time.perf_counter()
    with torch.inference_mode():
        encoder(image, output_hidden_states=True).hidden_states[-2]
        encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
    sync(image.device)
    return {"step_s": time.perf_counter() - start}


@contextlib.contextmanager
def ip_adapter_loaded(unet: Any) -> Iterator[dict[str, Any]]:
    """`unet` with a random IP-Adapter Plus loaded by diffusers' loader for the block, plain again after
    (what the pipelines' `unload_ip_adapter` does); yields its build seconds and parameter bytes."""
    processors = unet.attn_processors
    before = parameter_bytes(unet)
    started = time.perf_counter()
    state = ip_adapter_state(unet)
    # low_cpu_mem_usage=False: the loader checks every shape (a strict load_state_dict); its new modules
    # are made on the UNet's device
    with torch.device(unet.device):
        unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    del state
    try:
        yield {"build_s": time.perf_counter() - started, "extra_parameter_bytes": parameter_bytes(unet) - before}
    finally:
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        unet.set_attn_processor(processors)


def setup(case: str, unet: Any, size: int, share_units: str) -> tuple[Callable[[], dict[str, float]], dict[str, Any]]:
    """What `case` adds to `unet`, built (the IP-Adapter cases: with the adapter already loaded), and one
    step of it; the step holds the models, which go with it. Also the figures of the build."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    device, dtype = unet.device, unet.dtype
    x = inputs(device, dtype, size)
    started = time.perf_counter()
    if case in ("unet", "ip_adapter"):
        if case == "ip_adapter":
            # one reference image's embeddings for the CFG pair (the negative: a zero image's), as the pipelines
            # pass them: ViT-H's penultimate hidden states, 257 × 1280
            embeds = torch.randn(2, 1, 257, VIT_H["hidden_size"], generator=torch.Generator().manual_seed(3))
            added = {**x["added_cond_kwargs"], "image_embeds": [embeds.to(device=device, dtype=dtype)]}
            x = {**x, "added_cond_kwargs": added}
        return functools.partial(unet_step, unet, x), {}
    if case in ("controlnet", "controlnet_x3"):
        units = 1 if case == "controlnet" else 3
        models = [build_controlnet(unet)]
        one = parameter_bytes(models[0])
        shared = False
        if units > 1:
            # the other units' weights, and a margin for the activations and the rest of the process
            room = _available(device) - (units - 1) * one - max(2 * 2**30, one // 2)
            shared = share_units == "always" or (share_units == "auto" and room < 0) or device.type == "meta"
            models += [models[0] if shared else build_controlnet(unet) for _ in range(units - 1)]
        figures = {
            "build_s": time.perf_counter() - started,
            "units": units,
            "shared_weights": shared,
            "extra_parameter_bytes": one * units,  # what `units` distinct ControlNets take, shared or not
            "resident_extra_parameter_bytes": parameter_bytes(*models),
        }
        image = control_image(device, dtype, size)
        if units == 1:
            control: dict[str, Any] = {"controlnet_cond": image, "conditioning_scale": 1.0}
            return functools.partial(controlnet_step, models[0], unet, x, **control), figures
        control = {"controlnet_cond": [image] * units, "conditioning_scale": [1.0] * units}
        return functools.partial(controlnet_step, MultiControlNetModel(models), unet, x, **control), figures
    if case == "union":
        union = build_union(unet)
        figures = {"build_s": time.perf_counter() - started, "extra_parameter_bytes": parameter_bytes(union)}
        types = torch.zeros(2, UNION_TYPES, device=device, dtype=dtype)
        types[:, 1] = 1  # depth
        control = {
            "controlnet_cond": [control_image(device, dtype, size)],
            "control_type": types,
            "control_type_idx": [1],
            "conditioning_scale": [1.0],
        }
        return functools.partial(controlnet_step, union, unet, x, **control), figures
    if case == "image_encoder":
        encoder = build_image_encoder(device, dtype)
        figures = {"build_s": time.perf_counter() - started, "extra_parameter_bytes": parameter_bytes(encoder)}
        side = VIT_H["image_size"]
        image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(4)).to(device=device, dtype=dtype)
        return functools.partial(encoder_pass, encoder, image), figures
    raise ValueError(case)


def run_case(
    case: str, unet: Any, args: argparse.Namespace, log: Callable[[str], None], known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build what `case` adds to `unet`, time it, measure it, drop it; `known`: figures already had (the
    IP-Adapter's, loaded by `ip_adapter_loaded` around its cases)."""
    step, figures = setup(case, unet, args.size, args.share_units)
    row: dict[str, Any] = {"case": case, "build_s": 0.0, "extra_parameter_bytes": 0, **(known or {}), **figures}
    with peak(unet.device, row):
        row.update(timed(unet.device, step, args.warmup, args.repeat))
    del step
    release(unet.device)
    row["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # others sharing the machine
    log(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    return row


def count_flops(cases: list[str], size: int) -> dict[str, int]:
    """The floating-point operations of each case's step (torch's FlopCounterMode), the models built on the
    meta device (shapes, no weights: seconds): what the step costs whatever else runs on the machine."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = build_unet(torch.device("meta"), torch.float32)
    counted: dict[str, int] = {}
    for case in cases:
        with contextlib.ExitStack() as stack:
            if case in IP_CASES:
                stack.enter_context(ip_adapter_loaded(unet))
            step, _ = setup(case, unet, size, "always")
            with FlopCounterMode(display=False) as counter:
                step()
            counted[case] = counter.get_total_flops()
    return counted


def gib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def main() -> None:
    from picserve.engine import loader

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="square output size in px (default: CUDA 1024, CPU 512)")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES, help="which to run (default: all)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed passes per case, median (default: CUDA 3, CPU 1)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument(
        "--share-units",
        default="auto",
        choices=["auto", "always", "never"],
        help="controlnet_x3: one ControlNet for the three units (auto: when three copies do not fit)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--flops-only", action="store_true", help="only count each case's FLOPs (seconds, no weights)")
    parser.add_argument("--out", type=Path, default=None, help="write every figure there as JSON")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    begun = time.perf_counter()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    args.size = args.size or (1024 if on_cuda else 512)  # the CPU's defaults: all cases in about 7 minutes
    args.repeat = args.repeat or (3 if on_cuda else 1)
    dtype = loader.resolve_dtype(args.dtype, device)  # the engine's choice (PICSERVE_DTYPE)
    cases = [c for c in CASES if c in args.cases]  # in this order: the IP-Adapter's last, "unet" first
    environment = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "batch": 2,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    flops = count_flops(sorted({"unet", *cases}, key=CASES.index), args.size)  # first: a dry run of every case
    log("FLOPs per step: " + ", ".join(f"{case} {count / 1e12:.2f} T" for case, count in flops.items()))
    rows: list[dict[str, Any]] = []
    if not args.flops_only:
        log(f"building SDXL base's UNet with random weights on {environment['device']} ({environment['dtype']})")
        started = time.perf_counter()
        unet = build_unet(device, dtype)
        environment["unet_build_s"] = time.perf_counter() - started
        environment["unet_parameter_bytes"] = parameter_bytes(unet)
        rows = [run_case(case, unet, args, log) for case in cases if case not in IP_CASES]
        if any(case in IP_CASES for case in cases):
            # the image encoder is measured beside the UNet and its IP-Adapter, as a worker holds them
            with ip_adapter_loaded(unet) as adapter:
                for case in (c for c in cases if c in IP_CASES):
                    rows.append(run_case(case, unet, args, log, adapter if case == "ip_adapter" else None))
        if rows and rows[0]["case"] == "unet" and len(rows) > 1:
            # the baseline again, last: its passes before and after the others pooled, so that a slow spell of
            # a shared machine at the start does not set every ratio
            again = timed(device, functools.partial(unet_step, unet, inputs(device, dtype, args.size)), 0, args.repeat)
            rows[0]["step_s_each"] += again["step_s_each"]
            rows[0]["step_s"] = statistics.median(rows[0]["step_s_each"])
            log(f"baseline again, last: {again['step_s_each']}; pooled median {rows[0]['step_s']:.3f} s")
        release(device)
    else:
        rows = [{"case": case} for case in cases]
    for row in rows:
        row["flops"] = flops[row["case"]]
    environment["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    environment["total_s"] = time.perf_counter() - begun
    if args.out:
        args.out.write_text(json.dumps({"environment": environment, "results": rows}, indent=1))

    if args.flops_only:
        print(f"\nFLOPs per step at {args.size}², batch 2 (CFG): the image encoder's are once per reference image\n")
        print("| case | TFLOP | × baseline |\n|---|---|---|")
        for r in rows:
            print(f"| {LABELS[r['case']]} | {r['flops'] / 1e12:.2f} | {r['flops'] / flops['unet']:.2f} |")
        return
    base = next((r for r in rows if r["case"] == "unet"), None)
    memory = "peak CUDA memory allocated" if device.type == "cuda" else "peak RSS"
    print(
        f"\nSDXL base architecture, random weights; {environment['device']}, torch {environment['torch']}, "
        f"{environment['dtype']}, {args.size}², batch 2 (CFG); median of {args.repeat} after {args.warmup} "
        f"warm-up (the baseline: of its passes first and last); UNet {gib(environment['unet_parameter_bytes'])} GiB; "
        f"{memory} includes the weights; the image encoder's row is once per reference image\n"
    )
    print(
        "| case | s / step | × baseline (time) | × baseline (FLOPs) | TFLOP | extra parameters GiB | "
        f"{memory} GiB (+ over baseline) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = LABELS[r["case"]]
        if r.get("shared_weights"):
            label += " (one model's weights used 3×: three do not fit)"
        seconds = f"{r['step_s']:.2f}"
        if "control_s" in r:
            seconds += f" ({r['control_s']:.2f} control + {r['unet_s']:.2f} UNet)"
        ratio = "–" if base is None else f"{r['step_s'] / base['step_s']:.2f}"
        over = "" if base is None or r is base else f" (+{gib(r['peak_bytes'] - base['peak_bytes'])})"
        print(
            f"| {label} | {seconds} | {ratio} | {r['flops'] / flops['unet']:.2f} | {r['flops'] / 1e12:.2f} | "
            f"{gib(r['extra_parameter_bytes'])} | {gib(r['peak_bytes'])}{over} |"
        )
    print(f"\ntotal {environment['total_s']:.0f} s (UNet build {environment['unet_build_s']:.0f} s)")


if __name__ == "__main__":
    main()

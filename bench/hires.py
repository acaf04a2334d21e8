"""Hires fix against a single pass on full-size SDXL: a large image in two passes or in one, time and peak memory.

    .venv/bin/python bench/hires.py                          # 2048² (first pass 1024²); CUDA fp16, CPU fp32
    .venv/bin/python bench/hires.py --size 1536 --out hires.json
    .venv/bin/python bench/hires.py --size 512 --parts step_first step_full   # a quick run

The models are SDXL base's UNet and VAE from the configs picserve ships (engine/sdxl_base.py), random
weights (time and memory follow shapes, not values; nothing is downloaded; the text encoders are left
out: a prompt is encoded once per request either way, and on the CPU their 2.8 GiB of fp32 weights
would only crowd the 2048² step).

**Measured** (each the median of --repeat passes after --warmup, torch.cuda.synchronize around each on
CUDA; defaults: CUDA 1 warm-up and 3 passes, CPU none and 1), in this order, each with its peak memory:

- `step_first`: one UNet denoising step at the first-pass size (--first, default
  `specs.generation.first_pass_size(--size, --size)`: 1024² for 2048²), batch 2 (classifier-free
  guidance), under inference mode;
- `step_full`: the same at the full size (--size);
- `upscale`: the "Latent" upscaler, `engine.hires.upscale_latents` of one image's first-pass latents;
- `resample`: the "Lanczos" upscaler's PIL resample of the decoded first-pass image (what
  `engine.upscale.resize` runs without a model);
- `decode_full`: the VAE decode at the full size, as the engine decodes (`precision.vae_decode`, upcast
  when diffusers upcasts), tiled exactly when `admission.plan` tiles it for one image with the memory
  free on the device now (above 1280² it always does: `pipe.vae.enable_tiling()`);
- `decode_first`: the VAE decode at the first-pass size (planned the same way): what a pixel-space hires
  (Lanczos or an upscaler model) pays on top of the latent one;
- `encode_full`: the VAE encode at the full size, tiled when the full size's plan is (the engine's tiled
  VAE covers the whole img2img call): the pixel-space second pass's img2img input.

**Derived** from those (nothing else is run): the totals of a request of --steps steps at each of
--strengths (0.7: `domain.Hires`'s default), as engine/hires.py runs it (the second pass runs
int(steps × strength) steps):

- single pass: steps × step_full + decode_full;
- hires, Latent: steps × step_first + upscale + int(steps × strength) × step_full + decode_full;
- hires, Lanczos: steps × step_first + decode_first + resample + encode_full
  + int(steps × strength) × step_full + decode_full;

and the peak of each way: the largest of its parts' peaks. Prompt encoding, the scheduler's arithmetic,
the PNG are left out of all three alike. The floating-point operations of the two UNet steps are counted
first (torch's FlopCounterMode on the meta device: seconds, no weights; `--flops-only` stops there), and
each way's UNet FLOPs against the single pass's: the ratio that other jobs on the machine cannot move
(at 2048² a step is 5.3× a 1024² one: attention grows with the square of the pixels).

The dtype is the engine's (`--dtype`, default auto: `loader.resolve_dtype`, fp16 on CUDA, fp32 on the
CPU). Memory, weights included: on CUDA `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`; on the CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs
after a heap trim, as bench/controlnet.py). On the CPU a 2048² step takes minutes (a 1024² one 85 s on 2
cores): the whole run at 2048² is about half an hour there. `--out` is written after every part, so a run
killed part-way (out of memory) keeps what it measured.

Writes `--out` (JSON, every figure) when given and prints Markdown tables for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.controlnet
from bench.controlnet import peak, release, sync

PARTS = ["step_first", "step_full", "upscale", "resample", "decode_full", "decode_first", "encode_full"]
#: what each part is, for the table
LABELS = {
    "step_first": "UNet step, first pass (CFG pair)",
    "step_full": "UNet step, full size (CFG pair)",
    "upscale": "latent upscale (Latent)",
    "resample": "Lanczos resample of the image",
    "decode_full": "VAE decode, full size",
    "decode_first": "VAE decode, first pass",
    "encode_full": "VAE encode, full size",
}


def build(device: torch.device, dtype: torch.dtype, vae: bool = True) -> tuple[Any, Any]:
    """SDXL base's UNet and VAE from picserve's configs, random weights, on `device` in `dtype` (bench/sdxl.py's
    `build` without the text encoders)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from picserve.engine import sdxl_base

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        folder = sdxl_base.config_dir(Path(cache))
        unet_config = UNet2DConditionModel.load_config(folder / "unet")
        vae_config = AutoencoderKL.load_config(folder / "vae")
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_config)
        decoder = AutoencoderKL.from_config(vae_config).to(dtype=dtype).eval() if vae else None
    return unet.to(dtype=dtype).eval(), decoder


def randn(device: torch.device, dtype: torch.dtype, *shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def unet_inputs(device: torch.device, dtype: torch.dtype, size: int) -> dict[str, Any]:
    """A step's inputs at batch 2 (the CFG pair): latents, prompt embeddings, SDXL's added conditions."""
    return {
        "sample": randn(device, dtype, 2, 4, size // 8, size // 8),
        "timestep": torch.tensor(500.0, device=device),
        "encoder_hidden_states": randn(device, dtype, 2, 77, 2048, seed=2),
        "added_cond_kwargs": {
            "text_embeds": randn(device, dtype, 2, 1280, seed=3),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        },
    }


def tiled_plan(size: int, device: torch.device) -> bool:
    """Whether the engine decodes one size² image tiled on `device` now (admission.plan, the memory free
    beside the weights already loaded)."""
    from picserve import admission
    from picserve.engine.devices import free_device_memory

    plan = admission.plan(size, size, 1, 1, free_device_memory(device), admission.profile_for(device.type))
    return plan.tiled_vae


@contextlib.contextmanager
def tiling(vae: Any, enabled: bool) -> Iterator[None]:
    """diffusers' tiled VAE for the block when `enabled`, as engine/tiling.tiled_vae switches it."""
    if enabled:
        vae.enable_tiling()
    try:
        yield
    finally:
        if enabled:
            vae.disable_tiling()


def timer(device: torch.device, fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        sync(device)
        return time.perf_counter() - start

    return run


def setup(part: str, unet: Any, vae: Any, args: argparse.Namespace) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The callable that runs `part` once, and what it runs at (size, tiled)."""
    from PIL import Image

    from picserve.engine import precision
    from picserve.engine.hires import upscale_latents

    device, dtype = unet.device, unet.dtype
    if part in ("step_first", "step_full"):
        size = args.first if part == "step_first" else args.size
        x = unet_inputs(device, dtype, size)
        return lambda: unet(**x, return_dict=False), {"size": size, "batch": 2}
    if part == "upscale":
        latents = randn(device, dtype, 1, 4, args.first // 8, args.first // 8)
        return lambda: upscale_latents(latents, args.size, args.size), {"size": args.size, "batch": 1}
    if part == "resample":
        image = Image.fromarray((torch.rand(args.first, args.first, 3) * 255).to(torch.uint8).numpy())
        return lambda: image.resize((args.size, args.size), Image.Resampling.LANCZOS), {"size": args.size, "batch": 1}
    size = args.first if part == "decode_first" else args.size
    tiled = tiled_plan(size, device)
    upcast = precision.upcasts(vae)  # diffusers' rule: an fp16 VAE with force_upcast runs in fp32
    if part in ("decode_full", "decode_first"):
        latents = randn(device, dtype, 1, 4, size // 8, size // 8)

        def decode() -> Any:
            with tiling(vae, tiled):
                return precision.vae_decode(vae, latents, upcast=upcast)

        return decode, {"size": size, "batch": 1, "tiled": tiled, "upcast": upcast}
    assert part == "encode_full", part
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4)).to(device) * 2 - 1

    def encode() -> Any:
        # as StableDiffusionXLImg2ImgPipeline.prepare_latents: the VAE upcast for it, a sample, the scaling
        with tiling(vae, tiled), precision.dtypes_kept(type("Pipe", (), {"vae": vae})()):
            if upcast:
                vae.to(dtype=torch.float32)
            weights = next(iter(vae.quant_conv.parameters()))
            sample = vae.encode(image.to(weights.dtype), return_dict=False)[0].sample(torch.Generator(device.type))
            return sample * vae.config.scaling_factor

    return encode, {"size": size, "batch": 1, "tiled": tiled, "upcast": upcast}


def run_part(part: str, unet: Any, vae: Any, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    fn, figures = setup(part, unet, vae, args)
    row: dict[str, Any] = {"part": part, **figures}
    device = unet.device
    run = timer(device, fn)
    started = time.perf_counter()
    with peak(device, row):
        for _ in range(args.warmup):
            run()
        each = [run() for _ in range(args.repeat)]
    row["s"] = statistics.median(each)
    row["s_each"] = [round(s, 4) for s in each]
    row["wall_s"] = time.perf_counter() - started
    row["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # others sharing the machine
    del fn
    release(device)
    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    return row


def totals(
    parts: dict[str, dict[str, Any]], steps: int, strengths: list[float], flops: dict[int, int], first: int, size: int
) -> list[dict[str, Any]]:
    """The derived totals of a request (see the module docstring), for the parts that were measured."""

    def s(name: str) -> float:
        return parts[name]["s"]

    def peak_of(*names: str) -> int:
        return max(parts[n]["peak_bytes"] for n in names)

    out: list[dict[str, Any]] = []
    if not {"step_full", "decode_full"} <= parts.keys():
        return out
    single = steps * s("step_full") + s("decode_full")
    out.append({
        "way": "single pass", "strength": None, "steps_first": 0, "steps_full": steps, "s": single,
        "peak_bytes": peak_of("step_full", "decode_full"),
    })  # fmt: skip
    for strength in strengths:
        second = max(1, int(steps * strength))
        if {"step_first", "upscale"} <= parts.keys():
            seconds = steps * s("step_first") + s("upscale") + second * s("step_full") + s("decode_full")
            out.append({
                "way": "hires, Latent", "strength": strength, "steps_first": steps, "steps_full": second,
                "s": seconds, "peak_bytes": peak_of("step_first", "upscale", "step_full", "decode_full"),
            })  # fmt: skip
        pixel = ("step_first", "decode_first", "resample", "encode_full", "step_full", "decode_full")
        if set(pixel) <= parts.keys():
            seconds = (
                steps * s("step_first")
                + s("decode_first")
                + s("resample")
                + s("encode_full")
                + second * s("step_full")
                + s("decode_full")
            )
            out.append({
                "way": "hires, Lanczos", "strength": strength, "steps_first": steps, "steps_full": second,
                "s": seconds, "peak_bytes": peak_of(*pixel),
            })  # fmt: skip
    for row in out:
        row["x_single"] = row["s"] / single
        row["unet_flops"] = row["steps_first"] * flops[first] + row["steps_full"] * flops[size]
        row["x_single_unet_flops"] = row["unet_flops"] / (steps * flops[size])
    return out


def count_flops(sizes: list[int]) -> dict[int, int]:
    """The floating-point operations of one UNet step (batch 2) at each of `sizes`, the UNet built on the
    meta device (shapes, no weights: seconds)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, _ = build(torch.device("meta"), torch.float32, vae=False)
    counted = {}
    for size in sizes:
        x = unet_inputs(torch.device("meta"), torch.float32, size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            unet(**x, return_dict=False)
        counted[size] = counter.get_total_flops()
    return counted


def gib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def main() -> None:
    from picserve.engine import loader
    from picserve.specs.generation import first_pass_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="square output size in px (default 2048)")
    parser.add_argument(
        "--first", type=int, default=None, help="first-pass size (default: specs.generation.first_pass_size)"
    )
    parser.add_argument("--steps", type=int, default=30, help="steps of the request, for the totals (default 30)")
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[0.7, 0.5], help="hires strengths, for the totals"
    )
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS, help="which to measure (default: all)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed passes first (default: CUDA 1, CPU 0)")
    parser.add_argument("--repeat", type=int, default=None, help="timed passes, median (default: CUDA 3, CPU 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--flops-only", action="store_true", help="only count the UNet steps' FLOPs (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write every figure there as JSON (after each part)")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    begun = time.perf_counter()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    args.first = args.first or first_pass_size(args.size, args.size)[0]
    args.warmup = (1 if on_cuda else 0) if args.warmup is None else args.warmup
    args.repeat = args.repeat or (3 if on_cuda else 1)
    dtype = loader.resolve_dtype(args.dtype, device)  # the engine's choice (PICSERVE_DTYPE)
    environment: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if on_cuda
        else f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
        "cuda": torch.version.cuda if on_cuda else None,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "first": args.first,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    flops = count_flops([args.first, args.size])  # first: a dry run of both steps' shapes
    environment["unet_step_flops"] = {str(size): count for size, count in flops.items()}
    log(
        f"FLOPs per UNet step (batch 2): {args.first}² {flops[args.first] / 1e12:.2f} T, "
        f"{args.size}² {flops[args.size] / 1e12:.2f} T ({flops[args.size] / flops[args.first]:.2f}×)"
    )
    if args.flops_only:
        for strength in args.strengths:
            second = max(1, int(args.steps * strength))
            hires = args.steps * flops[args.first] + second * flops[args.size]
            print(
                f"UNet FLOPs, hires {args.steps} + {second} steps (strength {strength:g}) against {args.steps} "
                f"single-pass steps: {hires / 1e12:.0f} T / {args.steps * flops[args.size] / 1e12:.0f} T = "
                f"{hires / (args.steps * flops[args.size]):.2f}"
            )
        return
    log(f"building SDXL base's UNet and VAE with random weights on {environment['device']} ({environment['dtype']})")
    started = time.perf_counter()
    unet, vae = build(device, dtype)
    environment["build_s"] = time.perf_counter() - started
    rows: list[dict[str, Any]] = []

    def write() -> None:
        environment["total_s"] = time.perf_counter() - begun
        environment["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        parts = {r["part"]: r for r in rows}
        result = {
            "environment": environment,
            "measured": rows,
            "derived": totals(parts, args.steps, args.strengths, flops, args.first, args.size),
        }
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))

    for part in (p for p in PARTS if p in args.parts):
        rows.append(run_part(part, unet, vae, args, log))
        write()
    derived = totals({r["part"]: r for r in rows}, args.steps, args.strengths, flops, args.first, args.size)

    memory = "peak CUDA memory allocated" if on_cuda else "peak RSS"
    print(
        f"\nSDXL base architecture (UNet + VAE), random weights; {environment['device']}, torch "
        f"{environment['torch']}, {environment['dtype']}; {args.size}², first pass {args.first}²; median of "
        f"{args.repeat} after {args.warmup} warm-up; {memory} includes the weights\n"
    )
    print(f"Measured:\n\n| part | size | s | {memory} GiB (+ over weights) |\n|---|---|---|---|")
    for r in rows:
        label = LABELS[r["part"]] + (", tiled" if r.get("tiled") else "") + (", upcast fp32" if r.get("upcast") else "")
        over = r["peak_bytes"] - r["memory_before_bytes"]
        print(f"| {label} | {r['size']}² | {r['s']:.2f} | {gib(r['peak_bytes'])} (+{gib(over)}) |")
    if derived:
        print(
            f"\nDerived from the measured parts, a request of {args.steps} steps:\n\n"
            f"| way | strength | steps first + full | s (derived) | × single pass (time) | × single pass "
            f"(UNet FLOPs) | {memory} GiB (largest part) |\n|---|---|---|---|---|---|---|"
        )
        for d in derived:
            strength = "–" if d["strength"] is None else f"{d['strength']:g}"
            print(
                f"| {d['way']} | {strength} | {d['steps_first']} + {d['steps_full']} | {d['s']:.0f} | "
                f"{d['x_single']:.2f} | {d['x_single_unet_flops']:.2f} | {gib(d['peak_bytes'])} |"
            )
    write()
    print(f"\ntotal {environment['total_s']:.0f} s (build {environment['build_s']:.0f} s)")


if __name__ == "__main__":
    main()

"""Full-size SDXL on this machine's device: seconds per image, UNet it/s, VAE decode, peak memory, LoRAs.

    .venv/bin/python bench/sdxl.py                            # CUDA: 1024², 30 steps, fp16
    .venv/bin/python bench/sdxl.py --size 256 --steps 2       # anywhere (CPU: fp32, minutes)
    .venv/bin/python bench/sdxl.py --dtype bfloat16           # another compute dtype (default: auto)
    .venv/bin/python bench/sdxl.py --variants eager channels_last fused_qkv compile all --batch 1 4 --loras 0 1 3 --load

The pipeline is SDXL base 1.0's architecture built from the configs picserve ships (engine/sdxl_base.py)
with random weights: the compute is a real SDXL's (the anchors in ../shared/notes/anchors-2026.md: on an
H100 at 1024², 30 steps, CFG 7, diffusers eager fp16 ≈ 2.0 s per image, torch.compile ≈ 1.6 s), and
nothing is downloaded. Euler, CFG 7, the prompt embeddings computed once and reused, so the figures are
the denoising and the decode.

Each variant is a pipeline built anew and given the engine's own switches with `acceleration.prepare`
(engine/acceleration.py), so the benchmark measures exactly what a worker runs: `eager` (nothing);
`channels_last`; `fused_qkv`; `compile` (the UNet compiled for --size, mode --compile-mode, no LoRA
slots); `compile_slots` (the same with --lora-slots hot-swap slots of rank --lora-max-rank: what a
worker that takes LoRAs runs, slots at weight 0); `all` (channels_last, fused QKV, compile and the
slots). A compiled variant's first call is `acceleration.warm_up` (the compilation, reported apart).
For each variant and batch size: seconds per image, UNet iterations per second, the VAE decode, peak
device memory, and how far its image is from eager's (max |Δ| of the decoded pixels in [0, 1], batch 1).
The eager variant also runs with 0, 1 and 3 LoRAs active (rank 32 on every attention projection, made
here as PEFT adapters) and times the switch between two LoRA sets (`set_adapters`); a variant with
slots times hot-swapping two such LoRAs into its slots, a weight change, and checks that neither made
dynamo compile again. `--load` also times loading a main model from a single-file `.safetensors`
written here (cold: the file's pages dropped from the page cache with posix_fadvise where the OS
allows; warm: a second load).

The compute dtype is the engine's (`--dtype`, default auto: `loader.resolve_dtype`, fp16 on CUDA, fp32
on the CPU), and the VAE decodes as the engine's pipelines decode: upcast to fp32 exactly when diffusers'
SDXL pipelines upcast it (an fp16 VAE whose config has `force_upcast`, `decode_dtype`), in the VAE's
own dtype otherwise; the decode dtype is reported.

Writes `--out` (JSON, every figure) and prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(device: torch.device, dtype: torch.dtype, cache: Path) -> Any:
    """SDXL base's pipeline with random weights, on `device` in `dtype`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from picserve.engine import sdxl_base

    folder = sdxl_base.config_dir(cache)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(folder / "scheduler")),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, float]) -> Iterator[None]:
    """Peak device memory (CUDA), or the process's peak RSS so far (CPU: weights included), in GiB,
    into out["peak_gib"]."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        yield
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def add_loras(pipe: Any, first: int, count: int) -> list[str]:
    """`count` more rank-32 LoRAs (named from `first` on) on every attention projection of the UNet: the
    compute of real ones (PEFT starts B at zero, so they leave the image as it is)."""
    from peft import LoraConfig

    names = []
    for i in range(first, first + count):
        name = f"bench_{i}"
        pipe.unet.add_adapter(
            LoraConfig(
                r=32, lora_alpha=32, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]
            ),
            adapter_name=name,
        )
        names.append(name)
    return names


def decode_dtype(vae: Any) -> torch.dtype:
    """The dtype the SDXL pipelines decode in with `vae` (`precision.upcasts`: fp32 for an fp16 VAE whose
    config has `force_upcast`), its own dtype otherwise."""
    from picserve.engine import precision

    return torch.float32 if precision.upcasts(vae) else vae.dtype


def decode(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The pipelines' decode of denoised `latents`, as the engine runs it (`precision.vae_decode`: the VAE
    upcast when diffusers upcasts it, and put back after, even when the decode raises)."""
    from picserve.engine import precision

    with torch.inference_mode():
        return precision.vae_decode(pipe.vae, latents, upcast=precision.upcasts(pipe.vae))


def generate(
    pipe: Any, embeds: dict[str, torch.Tensor], size: int, steps: int, batch: int, images: list[Any] | None = None
) -> dict[str, float]:
    """One timed generation: total seconds, the UNet's share (it/s), the VAE decode; the decoded images
    (float, on the CPU) appended to `images` when given."""
    device = pipe.unet.device
    marks: list[float] = []

    def on_step(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        sync(device)
        marks.append(time.perf_counter())
        return kwargs

    sync(device)
    start = time.perf_counter()
    latents = pipe(
        **{k: v.repeat(batch, *[1] * (v.ndim - 1)) for k, v in embeds.items()},
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=7.0,
        output_type="latent",
        callback_on_step_end=on_step,
        generator=torch.Generator("cpu").manual_seed(1),
    ).images
    denoised = time.perf_counter()
    decoded = decode(pipe, latents).float().cpu()
    sync(device)
    if images is not None:
        images.append(decoded)
    end = time.perf_counter()
    unet_seconds = marks[-1] - start if marks else denoised - start
    return {
        "seconds": end - start,
        "seconds_per_image": (end - start) / batch,
        "unet_it_per_s": steps / unet_seconds,
        "vae_decode_s": end - denoised,
    }


def lora_state(pipe: Any, seed: int, rank: int = 32, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """A random rank-`rank` LoRA on every attention projection of the UNet, in the diffusers/PEFT layout
    (B non-zero, so that it changes the image as a trained one does; A and B of standard deviation `scale`)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in pipe.unet.named_modules():
        # a linear layer, or peft's wrapper of one (the LoRA slots wrap them all)
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) and hasattr(module, "in_features"):
            state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * scale
            state[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * scale
    assert state, "no attention projection found in the UNet"
    return state


def hot_swaps(pipe: Any, embeds: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any] | None:
    """With LoRA slots: seconds to hot-swap two rank-32 LoRAs into slots 0 and 1 and to change weights,
    a generation with them, and whether dynamo compiled anything meanwhile (it must not)."""
    from torch._dynamo.utils import counters

    from picserve.engine.lora.apply import lora_slots

    slots = lora_slots(pipe)
    if slots is None or slots.count < 2:
        return None
    graphs = counters["stats"]["unique_graphs"]
    swaps = []
    for index in (0, 1):
        converted = pipe.lora_state_dict(
            lora_state(pipe, index), unet_config=pipe.unet.config, return_lora_metadata=True
        )
        sync(pipe.unet.device)
        start = time.perf_counter()
        slots.load(pipe, index, *converted)
        sync(pipe.unet.device)
        swaps.append(time.perf_counter() - start)
    start = time.perf_counter()
    slots.set_weights({0: 0.8, 1: 0.5})
    sync(pipe.unet.device)
    weights_s = time.perf_counter() - start
    with_loras = median_run(lambda: generate(pipe, embeds, args.size, args.steps, 1), args.repeat)
    slots.set_weights({})
    return {
        "hot_swap_s": swaps,
        "set_weights_s": weights_s,
        "seconds_per_image_with_2_loras": with_loras["seconds_per_image"],
        "recompiled": counters["stats"]["unique_graphs"] != graphs,
    }


def options_for(variant: str, args: argparse.Namespace) -> Any:
    """The engine's switches for a variant of this benchmark (see the module docstring)."""
    from picserve.engine.acceleration import Acceleration

    compiled = {
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
        "compile_sizes": ((args.size, args.size),),
        "lora_max_rank": args.lora_max_rank,
    }
    return {
        "eager": Acceleration(),
        "channels_last": Acceleration(channels_last=True),
        "fused_qkv": Acceleration(fuse_qkv=True),
        "compile": Acceleration(**compiled, lora_slots=0),
        "compile_slots": Acceleration(**compiled, lora_slots=args.lora_slots),
        "all": Acceleration(channels_last=True, fuse_qkv=True, **compiled, lora_slots=args.lora_slots),
    }[variant]


def median_run(fn: Callable[[], dict[str, float]], repeat: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeat)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def drop_page_cache(path: Path) -> bool:
    """Ask the OS to forget `path`'s pages (a cold read next time); False where it cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def load_times(pipe: Any, device: torch.device, dtype: torch.dtype, cache: Path) -> dict[str, Any]:
    """Seconds to load a single-file checkpoint of this pipeline: cold (pages dropped) and warm."""
    from diffusers import StableDiffusionXLPipeline

    from picserve.engine import checkpoint, sdxl_base

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        path = checkpoint.export_single_file(pipe.to(dtype=torch.float16), Path(tmp) / "bench.safetensors")
        pipe.to(dtype=dtype)
        out: dict[str, Any] = {"file_gib": path.stat().st_size / 2**30}
        for label in ("cold", "warm"):
            out[f"{label}_pages_dropped"] = drop_page_cache(path) if label == "cold" else False
            start = time.perf_counter()
            loaded = StableDiffusionXLPipeline.from_single_file(
                str(path), config=str(sdxl_base.config_dir(cache)), torch_dtype=dtype, local_files_only=True
            ).to(device)
            sync(device)
            out[f"{label}_s"] = time.perf_counter() - start
            del loaded
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def run_variant(variant: str, args: argparse.Namespace, pipe: Any, reference: torch.Tensor | None) -> dict[str, Any]:
    """The figures of one variant on a freshly built `pipe`: its rows, its image (batch 1, to compare),
    the eager LoRA rows and set switch (variant eager), the hot-swap figures (variants with slots)."""
    from torch._dynamo.utils import counters

    from picserve.engine import acceleration

    device = pipe.unet.device
    with torch.inference_mode():
        embeds = dict(zip(
            ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"],
            pipe.encode_prompt("a photo of a lighthouse at dusk", device=device, negative_prompt="blurry"),
            strict=True,
        ))  # fmt: skip
    acceleration.prepare(pipe, options_for(variant, args))
    first = time.perf_counter()
    if acceleration.compiled(pipe):
        acceleration.warm_up(pipe, [(args.size, args.size)])  # the compilation
    images: list[torch.Tensor] = []
    generate(pipe, embeds, args.size, args.steps, args.batch[0], images)  # warm-up, and the image to compare
    warmup = time.perf_counter() - first
    image = images[0][:1]
    reference = image if variant == "eager" else reference
    difference = None if reference is None else float((image - reference).abs().max() / 2)  # pixels: [-1, 1]
    rows = []
    for batch in args.batch:
        figures: dict[str, Any] = {}
        with peak_memory(device, figures):
            figures.update(
                median_run(functools.partial(generate, pipe, embeds, args.size, args.steps, batch), args.repeat)
            )
        rows.append({"variant": variant, "batch": batch, "loras": 0, "first_call_s": warmup, **figures})
        rows[-1]["max_abs_diff_vs_eager"] = difference
        rows[-1]["dynamo_graphs"] = counters["stats"]["unique_graphs"]  # the same for every batch: no recompile
        print(json.dumps(rows[-1]), file=sys.stderr)
    swapped = hot_swaps(pipe, embeds, args)
    if swapped is not None:
        print(json.dumps({"variant": variant, **swapped}), file=sys.stderr)
    switch = None
    if variant == "eager":
        names: list[str] = []
        for count in sorted(set(args.loras) - {0}):
            names += add_loras(pipe, len(names), count - len(names))
            pipe.set_adapters(names[:count])
            figures = median_run(lambda: generate(pipe, embeds, args.size, args.steps, 1), args.repeat)
            rows.append({"variant": "eager", "batch": 1, "loras": count, **figures})
            print(json.dumps(rows[-1]), file=sys.stderr)
        if len(names) >= 2:
            sets = [names[:1], names[1:]]
            turns = []
            for i in range(6):
                sync(device)
                start = time.perf_counter()
                pipe.set_adapters(sets[i % 2])
                sync(device)
                turns.append(time.perf_counter() - start)
            switch = statistics.median(turns)
    return {"rows": rows, "image": image, "switch": switch, "hot_swap": swapped}


def main() -> None:
    from picserve.engine import acceleration

    variants = ["eager", "channels_last", "fused_qkv", "compile", "compile_slots", "all"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--loras", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--variants", nargs="+", default=variants, choices=variants)
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", choices=acceleration.COMPILE_MODES)
    parser.add_argument("--compile-backend", default="inductor", help='"eager" or "aot_eager": dynamo only (CPU)')
    parser.add_argument("--lora-slots", type=int, default=3, help="hot-swap slots of compile_slots and all")
    parser.add_argument("--lora-max-rank", type=int, default=64, help="their rank")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median), after a warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--load", action="store_true", help="also time single-file loads (writes a 5 GB file)")
    parser.add_argument("--out", type=Path, default=Path("bench-sdxl.json"))
    args = parser.parse_args()

    from picserve.engine import loader

    device = torch.device(args.device)
    dtype = loader.resolve_dtype(args.dtype, device)  # the engine's choice (PICSERVE_DTYPE)
    cache = Path(tempfile.gettempdir()) / "picserve-bench"
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "driver": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
    }
    results: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    switch = None
    swaps: dict[str, Any] = {}
    for variant in args.variants:
        print(f"{variant}: building SDXL base with random weights on {environment['device']}", file=sys.stderr)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        started = time.perf_counter()
        pipe = build(device, dtype, cache)
        environment.setdefault("build_s", time.perf_counter() - started)
        environment.setdefault("vae_decode_dtype", str(decode_dtype(pipe.vae)).removeprefix("torch."))
        measured = run_variant(variant, args, pipe, reference)
        del pipe
        reference = measured["image"] if reference is None or variant == "eager" else reference
        results += measured["rows"]
        switch = measured["switch"] if measured["switch"] is not None else switch
        if measured["hot_swap"] is not None:
            swaps[variant] = measured["hot_swap"]
    loads = load_times(build(device, dtype, cache), device, dtype, cache) if args.load else None
    report = {
        "environment": environment,
        "results": results,
        "lora_switch_s": switch,
        "hot_swap": swaps,
        "load": loads,
    }
    args.out.write_text(json.dumps(report, indent=1))

    setup = (
        f"{environment['dtype']} (VAE decode {environment.get('vae_decode_dtype', '?')}), {args.size}², "
        f"{args.steps} steps, Euler, CFG 7; median of {args.repeat}"
    )
    print(f"\nSDXL base architecture, random weights; {environment['device']}, torch {environment['torch']}, {setup}\n")
    print(
        "| variant | batch | LoRAs | s / image | UNet it/s | VAE decode s | peak GiB | first call s | max Δ vs eager |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "–"
        first = f"{r['first_call_s']:.1f}" if "first_call_s" in r else "–"
        diff = f"{r['max_abs_diff_vs_eager']:.1e}" if r.get("max_abs_diff_vs_eager") is not None else "–"
        print(
            f"| {r['variant']} | {r['batch']} | {r['loras']} | {r['seconds_per_image']:.2f} | "
            f"{r['unet_it_per_s']:.2f} | {r['vae_decode_s']:.2f} | {peak} | {first} | {diff} |"
        )
    for variant, swapped in swaps.items():
        print(
            f"\n{variant}: hot-swap of a rank-32 LoRA into a slot "
            f"{', '.join(f'{t * 1000:.0f}' for t in swapped['hot_swap_s'])} ms; weights changed in "
            f"{swapped['set_weights_s'] * 1000:.1f} ms; s / image with 2 LoRAs in slots "
            f"{swapped['seconds_per_image_with_2_loras']:.2f}; recompiled: {swapped['recompiled']}"
        )
    if switch is not None:
        print(f"\nLoRA set switch (set_adapters, 1 ↔ 2 adapters loaded): {switch * 1000:.1f} ms")
    if loads:
        print(
            f"single-file load ({loads['file_gib']:.1f} GiB fp16): cold {loads['cold_s']:.1f} s "
            f"(pages dropped: {loads['cold_pages_dropped']}), warm {loads['warm_s']:.1f} s"
        )


if __name__ == "__main__":
    main()

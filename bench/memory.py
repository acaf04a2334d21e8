"""Peak memory of full-size SDXL's parts by output size: what `picserve.admission` estimates from.

    .venv/bin/python bench/memory.py                                   # CUDA: fp16, the sizes the card holds
    .venv/bin/python bench/memory.py --sizes 256 512 768 --out m.json  # CPU: fp32 (minutes)
    .venv/bin/python bench/memory.py --dtype bfloat16                  # another compute dtype (default: auto)

SDXL base's architecture with random weights (bench/sdxl.py's `build`: no download; memory depends on
shapes, not values). For each size, in this process, one at a time:

- `unet`: one UNet forward on a batch of 2 latents (one image with classifier-free guidance), under
  inference mode, as the pipeline runs it;
- `vae`: the VAE decode of one image's latents, untiled, in the dtype the engine decodes in (fp32 for
  an fp16 VAE whose config has `force_upcast`, as diffusers' SDXL pipelines upcast it; else the VAE's
  own: bench/sdxl.py's `decode_dtype`), printed and written as `vae_dtype`;
- `vae_tiled`: the same with diffusers' tiled decoding (`enable_tiling`).

The compute dtype is the engine's (`--dtype`, default auto: `loader.resolve_dtype`). The default sizes
are those whose estimated peak (the weights plus the untiled decode at `admission`'s bytes per pixel)
fits the device's whole memory: 1024², 1536², 2048² and 2560² on a 40 GB card or more, up to 2048² on a
24 GB one; a part that runs out of memory all the same is recorded as "OOM", memory is freed, and the
next one runs.

Each figure is the peak above what was allocated before it: on CUDA `torch.cuda.max_memory_allocated`
after `reset_peak_memory_stats`; on the CPU the process's peak RSS (VmHWM) after resetting it through
/proc/self/clear_refs, minus the RSS before. So that freed memory is not reused unseen on the CPU, the
script runs with glibc's MALLOC_MMAP_THRESHOLD_ at 128 KiB (every tensor is its own mapping, returned
to the OS when freed) and trims the heap before each figure. It prints bytes per output pixel for each part (the
activations of SDPA attention grow linearly with the pixels), which `admission.py`'s table is set from,
and writes every figure to `--out`.
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
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import reset_peak, status  # bench/procstat.py: /proc/self memory figures
from sdxl import build, decode_dtype  # bench/sdxl.py: the full-size SDXL with random weights, its decode dtype

#: the sizes measured by default, those that fit the device (see `default_sizes`)
CANDIDATE_SIZES = {"cuda": (1024, 1536, 2048, 2560), "cpu": (256, 512, 768)}


@contextlib.contextmanager
def peak_above_now(device: torch.device, out: dict[str, int]) -> Iterator[None]:
    """The peak bytes allocated inside the block above what was allocated when it began, into out["peak"]."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        torch.cuda.synchronize(device)
        out["peak"] = torch.cuda.max_memory_allocated(device) - before
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = reset_peak()
        yield
        out["peak"] = status("VmHWM") - before


def measure(device: torch.device, what: Callable[[], Any]) -> int | str:
    """The peak bytes of `what` above what was allocated before it, or "OOM" when it ran out of memory
    (its memory freed, so that the next figure can be taken)."""
    from picserve.engine import loader, memory

    out: dict[str, int] = {}
    try:
        with torch.inference_mode(), peak_above_now(device, out):
            result = what()
            del result
    except Exception as exc:
        if not memory.is_out_of_memory(exc):
            raise
        memory.release(exc, lambda: loader.free_memory(device))
        return "OOM"
    return out["peak"]


def unet_step(unet: Any, sample: torch.Tensor, text: torch.Tensor, added: dict[str, torch.Tensor]) -> Any:
    """One UNet forward as the pipeline runs it (a CFG pair of latents)."""
    return unet(sample, 500, text, added_cond_kwargs=added).sample


def default_sizes(device: torch.device, weight_bytes: int, decode_itemsize: int) -> list[int]:
    """The candidate sizes whose untiled decode (admission's bytes per pixel, measured in fp32, scaled to
    the decode dtype) fits the device's whole memory beside `weight_bytes` of weights; the smallest
    always."""
    from picserve import admission
    from picserve.engine.engine import device_memory

    profile = admission.profile_for(device.type)
    total = device_memory(device)
    candidates = CANDIDATE_SIZES["cuda" if device.type == "cuda" else "cpu"]
    fits = [
        size
        for size in candidates
        if weight_bytes + profile.overhead + profile.vae_per_pixel * decode_itemsize / 4 * size**2 <= total
    ]
    return fits or [candidates[0]]


def shown(value: int | str) -> str:
    return value if isinstance(value, str) else f"{value / 2**30:.2f} GiB"


def main() -> None:
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see the docstring
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="square sizes in pixels")
    parser.add_argument("--parts", nargs="+", default=["unet", "vae", "vae_tiled"])
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from picserve.engine import loader

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = loader.resolve_dtype(args.dtype, device)  # the engine's choice (PICSERVE_DTYPE)
    with tempfile.TemporaryDirectory() as cache:
        pipe = build(device, dtype, Path(cache))
    vae_dtype = decode_dtype(pipe.vae)  # what the pipelines decode in; the VAE stays so for every figure
    pipe.vae.to(vae_dtype)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae) for p in m.parameters())
    all_weights = loader.pipeline_bytes(pipe)
    sizes = args.sizes or default_sizes(device, all_weights, vae_dtype.itemsize)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "vae_dtype": str(vae_dtype),
        "unet_vae_weight_bytes": weights,
        "device_total_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "sizes": {},
    }
    print(
        f"{results['device']}, torch {results['torch']}: compute {dtype}, VAE decode {vae_dtype}; sizes "
        + ", ".join(f"{s}²" for s in sizes)
    )
    for size in sizes:
        latent = size // 8
        row: dict[str, int | str] = {}
        if "unet" in args.parts:
            sample = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
            text = torch.randn(2, 77, 2048, device=device, dtype=dtype)
            added = {
                "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
                "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
            }
            row["unet"] = measure(device, functools.partial(unet_step, pipe.unet, sample, text, added))
            del sample, text, added
        for part, tiled in (("vae", False), ("vae_tiled", True)):
            if part not in args.parts:
                continue
            latents = torch.randn(1, 4, latent, latent, device=device, dtype=vae_dtype)
            (pipe.vae.enable_tiling if tiled else pipe.vae.disable_tiling)()
            row[part] = measure(device, functools.partial(pipe.vae.decode, latents))
            del latents
        results["sizes"][size] = row
        per_pixel = {
            part: value if isinstance(value, str) else round(value / size**2, 1) for part, value in row.items()
        }
        print(f"{size}²: " + ", ".join(f"{p} {shown(v)}" for p, v in row.items()), f"(bytes/px {per_pixel})")
        sys.stdout.flush()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

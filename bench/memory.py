"""Peak memory of full-size SDXL's parts by output size: what `picserve.admission` estimates from.

    .venv/bin/python bench/memory.py                                   # CUDA: fp16, 1024² 2048² 2560²
    .venv/bin/python bench/memory.py --sizes 256 512 768 --out m.json  # CPU: fp32 (minutes)

SDXL base's architecture with random weights (bench/sdxl.py's `build`: no download; memory depends on
shapes, not values). For each size, in this process, one at a time:

- `unet`: one UNet forward on a batch of 2 latents (one image with classifier-free guidance), under
  inference mode, as the pipeline runs it;
- `vae`: the VAE decode of one image's latents, untiled;
- `vae_tiled`: the same with diffusers' tiled decoding (`enable_tiling`).

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
from sdxl import build  # bench/sdxl.py: the full-size SDXL with random weights


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


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
        before = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        yield
        out["peak"] = _rss("VmHWM") - before


def measure(device: torch.device, what: Callable[[], Any]) -> int:
    out: dict[str, int] = {}
    with torch.inference_mode(), peak_above_now(device, out):
        result = what()
        del result
    return out["peak"]


def main() -> None:
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see the docstring
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="square sizes in pixels")
    parser.add_argument("--parts", nargs="+", default=["unet", "vae", "vae_tiled"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sizes = args.sizes or ([1024, 2048, 2560] if device.type == "cuda" else [256, 512, 768])
    with tempfile.TemporaryDirectory() as cache:
        pipe = build(device, dtype, Path(cache))
    vae_dtype = torch.float32 if pipe.vae.config.force_upcast else dtype
    pipe.vae.to(vae_dtype)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae) for p in m.parameters())
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "vae_dtype": str(vae_dtype),
        "unet_vae_weight_bytes": weights,
        "sizes": {},
    }
    for size in sizes:
        latent = size // 8
        row: dict[str, int] = {}
        if "unet" in args.parts:
            sample = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
            text = torch.randn(2, 77, 2048, device=device, dtype=dtype)
            added = {
                "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
                "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
            }
            row["unet"] = measure(
                device,
                lambda sample=sample, text=text, added=added: (
                    pipe.unet(sample, 500, text, added_cond_kwargs=added).sample
                ),
            )
            del sample, text, added
        for part, tiled in (("vae", False), ("vae_tiled", True)):
            if part not in args.parts:
                continue
            latents = torch.randn(1, 4, latent, latent, device=device, dtype=vae_dtype)
            (pipe.vae.enable_tiling if tiled else pipe.vae.disable_tiling)()
            row[part] = measure(device, lambda latents=latents: pipe.vae.decode(latents).sample)
            del latents
        results["sizes"][size] = row
        per_pixel = {part: round(value / size**2, 1) for part, value in row.items()}
        print(f"{size}²: " + ", ".join(f"{p} {v / 2**30:.2f} GiB" for p, v in row.items()), f"(bytes/px {per_pixel})")
        sys.stdout.flush()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

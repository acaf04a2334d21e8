"""ResizeImage's 4× upscale on full-size upscalers: seconds and peak memory, through the worker's own path.

    .venv/bin/python bench/upscale.py                                # both models, 1024² → 4096²
    .venv/bin/python bench/upscale.py --models rrdb --size 256       # RRDB on a CPU: 256² (minutes)
    .venv/bin/python bench/upscale.py --models compact --tile 256    # a fixed tile (PICSERVE_UPSCALE_TILE)
    .venv/bin/python bench/upscale.py --out upscale.json             # every figure as JSON

The models are the architectures users download, with random weights (time and memory depend on shapes,
not values; nothing is downloaded), written to a temporary models folder as `.safetensors` files:

- `rrdb`: Real-ESRGAN x4plus's size, spandrel's ESRGAN (RRDB), 64 features, 23 blocks (16.7 M parameters);
- `compact`: realesr-general-x4v3's size, Real-ESRGAN Compact, 64 features, 32 convolutions (1.2 M).

Each runs as a worker runs it: an `Engine` over that folder (dtype auto: fp16 on CUDA where spandrel
allows it, fp32 on the CPU), the model loaded by `engine.upscalers` (timed: the cold load from the file),
and `upscale.run` on a `UpscaleSpec` of a size² PNG to 4·size², tiled as `plan_tile` plans it from free
memory (or `--tile`). Printed and written: the tile and the number of tiles, the upscale's seconds and
output megapixels per second, and its peak memory above what was allocated before (on CUDA
`torch.cuda.max_memory_allocated`; on the CPU peak RSS after the heap was trimmed: bench/memory.py's
`peak_above_now`). glibc's malloc is left as a worker has it: bench/memory.py's lowered mmap threshold
(every tensor its own mapping) made this upscale 3 to 8 times slower on the CPU, from page faults.
A second figure, one forward of a 128² tile alone, gives the bytes an input pixel of a tile takes,
beside `upscale.activation_bytes_per_pixel`'s estimate, which `plan_tile` plans from.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import picserve  # noqa: F401  (before spandrel: the torchvision shim)
from memory import peak_above_now  # bench/memory.py: the peak above what was allocated before the block

#: code → (what it stands for, the spandrel module builder's arguments)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "rrdb": ("Real-ESRGAN x4plus size: ESRGAN (RRDB) 64 features, 23 blocks", {"num_filters": 64, "num_blocks": 23}),
    "compact": ("realesr-general-x4v3 size: Compact 64 features, 32 convs", {"num_feat": 64, "num_conv": 32}),
}
#: the side of the probe tile (one forward alone) that gives the measured bytes per input pixel
PROBE = 128


def write_model(code: str, folder: Path) -> Path:
    """The full-size architecture `code` with random weights, as `folder/upscale/<code>.safetensors`."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    arguments = MODELS[code][1]
    model = ESRGAN(scale=4, **arguments) if code == "rrdb" else Compact(upscale=4, act_type="prelu", **arguments)
    path = folder / "upscale" / f"{code}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def test_image(size: int) -> str:
    """A size² PNG with structure at every scale (gradients and noise), base64."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 24, (size, size, 3)).astype(np.float32)
    pixels = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def measure(code: str, size: int, tile: int, dtype: str, folder: Path) -> dict[str, Any]:
    from picserve import domain
    from picserve.catalog import Catalog
    from picserve.engine import upscale
    from picserve.engine.engine import Engine

    write_model(code, folder)
    engine = Engine(Catalog(folder, ttl=0), upscale_tile=tile, dtype=dtype)
    device = engine.upscalers.device
    started = time.perf_counter()
    descriptor = engine.upscalers.get(code)
    load = time.perf_counter() - started
    planned = upscale.plan_tile(descriptor, device, tile)
    spans = upscale._spans(size, planned, upscale.OVERLAP)
    spec = domain.UpscaleSpec(
        width=4 * size, height=4 * size, source_width=size, source_height=size, model_code=code, image=test_image(size)
    )
    steps: list[float] = []
    peak: dict[str, int] = {}
    with peak_above_now(device, peak):
        started = time.perf_counter()
        generated = upscale.run(engine, spec, steps.append, None)
        _sync(device)
        seconds = time.perf_counter() - started
    assert generated.images[0].size == (4 * size, 4 * size) and steps[-1] == 1.0
    del generated
    probe: dict[str, int] = {}
    piece = torch.rand(1, 3, PROBE, PROBE, device=device, dtype=descriptor.dtype)
    with torch.inference_mode(), peak_above_now(device, probe):
        out = descriptor(piece)
        _sync(device)
        del out
    return {
        "model": code,
        "what": MODELS[code][0],
        "parameters": sum(p.numel() for p in descriptor.model.parameters()),
        "dtype": str(descriptor.dtype).removeprefix("torch."),
        "input": size,
        "output": 4 * size,
        "tile_planned": planned,
        "tile": spans[0][1] - spans[0][0] if len(spans) > 1 else 0,  # the side the tiles were shrunk to
        "tiles": len(spans) ** 2,
        "load_s": round(load, 2),
        "upscale_s": round(seconds, 2),
        "output_mpx_per_s": round((4 * size) ** 2 / 1e6 / seconds, 3),
        "peak_bytes": peak["peak"],
        "probe_bytes_per_pixel": round(probe["peak"] / PROBE**2),
        "estimate_bytes_per_pixel": upscale.activation_bytes_per_pixel(descriptor),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["rrdb", "compact"])
    parser.add_argument("--size", type=int, default=1024, help="the input's side; the output is 4× (default 1024)")
    parser.add_argument("--tile", type=int, default=0, help="tile side in input px (default 0: planned)")
    parser.add_argument("--dtype", default="auto", help="the engine's dtype: auto, float16, bfloat16, float32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"{machine}, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    rows = []
    for code in args.models:
        with tempfile.TemporaryDirectory() as folder:
            row = measure(code, args.size, args.tile, args.dtype, Path(folder))
        rows.append(row)
        print(json.dumps(row))
        sys.stdout.flush()
    print(
        "\n| model | dtype | input → output | tile planned: tiles | load s | upscale s | output Mpx/s | peak GiB | "
        f"{PROBE}² tile B/px measured / estimated |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tiles = f"{r['tile_planned']}: {r['tiles']} of {r['tile']}" if r["tile"] else "one piece"
        print(
            f"| {r['what']} | {r['dtype']} | {r['input']}² → {r['output']}² | {tiles} | {r['load_s']} | "
            f"{r['upscale_s']} | {r['output_mpx_per_s']} | {r['peak_bytes'] / 2**30:.2f} | "
            f"{r['probe_bytes_per_pixel']} / {r['estimate_bytes_per_pixel']} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

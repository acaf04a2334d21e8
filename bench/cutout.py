"""A BiRefNet-size cut-out of 1024² on this machine: seconds and peak memory, with and without matting.

    .venv/bin/python bench/cutout.py                          # build the stand-in, export it, measure
    .venv/bin/python bench/cutout.py --keep /tmp/standin      # keep the ONNX file there, reuse it next time
    .venv/bin/python bench/cutout.py --repeat 5 --out c.json  # more timed runs; every figure to JSON
    .venv/bin/python bench/cutout.py --backbone swin_b        # a smaller stand-in (Swin-B, about 110 M)
    .venv/bin/python bench/cutout.py --matting-only --matting-sizes 1024 2048 3072   # no model: matting by size

BiRefNet (the quality default among rembg's sessions) is a Swin-L backbone (`swin_v1_l`, window 12)
and a multi-scale decoder, about 220 M parameters, run on 1024² with ImageNet normalisation; rembg's
`birefnet-general` session feeds it and applies a sigmoid to its logits. Its code is in no installed
package and nothing can be downloaded, so this builds a stand-in of the same size and input: the real
backbone's architecture from torchvision's `SwinTransformer` (Swin-L: embed 192, depths 2-2-18-2,
heads 6-12-24-48, window 12; random weights) and a light FPN decoder (3 convolutions per scale, 96 to
768 channels from 1/4 to 1/32, a 1-channel head upsampled to 1024²), exported with torch's TorchScript
ONNX exporter (opset 17, the fixed 1×3×1024×1024 input BiRefNet's ONNX files have). Random weights
give a random mask, whose unknown band would be the whole image and make matting unrealistically slow;
so the stand-in's logits are a steep function of the input's brightness (a fixed 1×1 convolution
undoing the normalisation, as the tests' tiny model) plus 10⁻³ × tanh of the decoder's output: the whole
network still runs (its output is used), and a light subject on a dark ground gives a realistic mask.

The measurement runs in a fresh process (the export's memory is not counted): the file in a models
folder with a sidecar `Session: birefnet-general`, loaded by `cutout.Segmenters` and cut out by
`cutout.cut_out` exactly as a worker does (ONNX Runtime on the CPU with torch's thread count), on a
1024² image (a light disc, radius 320 px, its edge blurred by 2 px, on a dark ground, with noise).
Reported: the session's load, the first cut-out (ONNX Runtime's first run allocates its arenas), the
median of `--repeat` more, with hair "off" (the mask as alpha) and "on" (rembg's alpha matting,
defaults 240/15/15); each phase's peak RSS (VmHWM, reset through /proc/self/clear_refs before it) and
the peak above the RSS before it; the model alone (`session.predict`); the load average around it all
(other jobs on the machine slow it). Then alpha matting alone by image size (`--matting-sizes`, the same
picture at each size, its mask made from its brightness as the stand-in's; no model): seconds and peak
above, through `cutout.cut_out`'s matting step, which mattes above `cutout.MATTING_MAX_PIXELS` on a
scaled-down copy (so the figure of a larger size is that bound's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import reset_peak, status  # bench/procstat.py: /proc/self memory figures

ROOT = Path(__file__).resolve().parents[1]
SIZE = 1024
#: BiRefNet-general's parameters (swin_v1_l backbone and its decoder), for comparison
BIREFNET_PARAMETERS = 220_000_000
#: torchvision SwinTransformer arguments per backbone (window 12 as BiRefNet's swin_v1_l)
BACKBONES = {
    "swin_l": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
    "swin_b": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
}
#: decoder channels at 1/4, 1/8, 1/16, 1/32
DECODER = (96, 192, 384, 768)


def build(backbone: str) -> Any:
    """The stand-in (torch module, eval mode): Swin backbone + FPN decoder + brightness term."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from picserve import torchvision_compat

    torchvision_compat.install()  # torchvision beside the CPU torch (picserve's own import does it too)
    from torchvision.models.swin_transformer import SwinTransformer

    def block(channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        return nn.Sequential(*layers)

    class StandIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            arch = BACKBONES[backbone]
            self.features = SwinTransformer(patch_size=[4, 4], window_size=[12, 12], **arch).features
            widths = [arch["embed_dim"] * 2**i for i in range(4)]
            self.lateral = nn.ModuleList(nn.Conv2d(w, d, 1) for w, d in zip(widths, DECODER, strict=True))
            self.down = nn.ModuleList(nn.Conv2d(DECODER[i + 1], DECODER[i], 1) for i in range(3))
            self.blocks = nn.ModuleList(block(d) for d in DECODER)
            self.head = nn.Sequential(nn.Conv2d(DECODER[0], 32, 3, padding=1), nn.ReLU())
            self.out = nn.Conv2d(32, 1, 3, padding=1)
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            steep = 40.0  # a real model's confidence: the subject's inside saturates at 1.0
            self.register_buffer("bright_w", (steep * std / 3).reshape(1, 3, 1, 1))
            self.register_buffer("bright_b", torch.tensor([steep * (mean.sum().item() / 3 - 0.5)]))

        def forward(self, x: Any) -> Any:
            stages = []
            h = x
            for i, layer in enumerate(self.features):
                h = layer(h)
                if i in (1, 3, 5, 7):
                    stages.append(h.permute(0, 3, 1, 2))  # torchvision's Swin is NHWC
            d = self.blocks[3](self.lateral[3](stages[3]))
            for i in (2, 1, 0):
                up = F.interpolate(self.down[i](d), size=stages[i].shape[-2:], mode="bilinear", align_corners=False)
                d = self.blocks[i](self.lateral[i](stages[i]) + up)
            mask = self.out(F.interpolate(self.head(d), size=x.shape[-2:], mode="bilinear", align_corners=False))
            return F.conv2d(x, self.bright_w, self.bright_b) + 1e-3 * torch.tanh(mask)

    torch.manual_seed(0)
    return StandIn().eval()


def export(backbone: str, path: Path) -> dict[str, Any]:
    """Build the stand-in and export it to `path`; its parameter count and the export's seconds."""
    import torch

    model = build(backbone)
    parameters = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_image"],
            output_names=["output_image"],
        )
    return {"parameters": parameters, "export_s": time.perf_counter() - started, "onnx_bytes": path.stat().st_size}


def picture(size: int) -> Any:
    """The bench's image at `size`²: a light disc (radius 5/16 of the side), its edge blurred 2 px (at
    1024², scaled with the size), on a dark ground, with noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    image = Image.new("RGB", (size, size), (20, 24, 28))
    ImageDraw.Draw(image).ellipse(
        (size * 3 // 16, size * 3 // 16, size * 13 // 16, size * 13 // 16), fill=(236, 228, 220)
    )
    image = image.filter(ImageFilter.GaussianBlur(2 * size / SIZE))  # a photo's edge, a few pixels wide
    noisy = np.asarray(image).astype(np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def measure_matting(sizes: list[int]) -> dict[str, Any]:
    """Alpha matting alone (cutout's matting step, default thresholds and erode size) by image size."""
    import numpy as np

    from picserve.engine import cutout

    figures: dict[str, Any] = {"max_pixels": cutout.MATTING_MAX_PIXELS}
    for size in sizes:
        image = picture(size)
        grey = np.asarray(image.convert("L")).astype(np.float64) / 255
        mask = (255 / (1 + np.exp(-40 * (grey - 0.5)))).astype(np.uint8)  # the stand-in's mask, without it
        before = reset_peak()
        started = time.perf_counter()
        alpha, _ = cutout._matte(image, mask, 15, 240, 15)
        figures[str(size)] = {
            "s": time.perf_counter() - started,
            "above": status("VmHWM") - before,
            "band_pixels": int(np.count_nonzero((alpha > 0) & (alpha < 255))),
        }
    return figures


def measure(models: Path, repeat: int) -> dict[str, Any]:
    """In this (fresh) process: load the stand-in through picserve and time cut-outs of a 1024² image."""
    import numpy as np
    import torch

    from picserve import catalog
    from picserve.engine import cutout

    figures: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}
    image = picture(SIZE)

    started = time.perf_counter()
    import rembg  # noqa: F401  (the import is a worker's first cut-out's cost, measured apart)

    figures["import_rembg_s"] = time.perf_counter() - started
    segmenters = cutout.Segmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"))
    before = reset_peak()
    started = time.perf_counter()
    session = segmenters.get("standin-birefnet")
    figures["load"] = {"s": time.perf_counter() - started, "peak_rss": status("VmHWM"), "above": None}
    figures["load"]["above"] = figures["load"]["peak_rss"] - before
    figures["intra_op_threads"] = session.inner_session.get_session_options().intra_op_num_threads

    for hair in ("off", "on"):
        runs: list[float] = []
        before = reset_peak()
        for _ in range(1 + repeat):
            started = time.perf_counter()
            result = cutout.cut_out(session, image, hair=hair)
            runs.append(time.perf_counter() - started)
        peak = status("VmHWM")
        opaque = int(np.count_nonzero(np.asarray(result.getchannel("A")) == 255))
        figures[f"hair_{hair}"] = {
            "first_s": runs[0],
            "median_s": statistics.median(runs[1:]) if repeat else None,
            "runs_s": runs,
            "peak_rss": peak,
            "above": peak - before,
            "opaque_pixels": opaque,
        }
    mask = cutout._predict(session, image)
    figures["edge_width"] = cutout.edge_width(mask, session.input_size)
    figures["auto_mattes"] = cutout.is_soft(mask, session.input_size)
    started = time.perf_counter()
    for _ in range(max(1, repeat)):
        cutout._predict(session, image)
    figures["predict_s"] = (time.perf_counter() - started) / max(1, repeat)
    figures["load_average_after"] = os.getloadavg()
    return figures


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(figures: dict[str, Any]) -> None:
    print(f"\n{figures['machine']}")
    if "model" in figures:
        report_cut_outs(figures)
    if "matting" in figures:
        matting = figures["matting"]
        print(f"\nalpha matting alone (above {matting['max_pixels'] / 2**20:.0f} MP: on a scaled-down copy)")
        print("\n| image | seconds | peak above | matted band |")
        print("|---|---|---|---|")
        for size, h in matting.items():
            if size != "max_pixels":
                print(f"| {size}² | {h['s']:.1f} s | {_gib(h['above'])} | {h['band_pixels']:,} px |")


def report_cut_outs(figures: dict[str, Any]) -> None:
    model = figures["model"]
    print(
        f"\nstand-in: {model['backbone']} + FPN decoder, {model['parameters'] / 1e6:.1f} M parameters "
        f"(BiRefNet ≈ {BIREFNET_PARAMETERS / 1e6:.0f} M), ONNX {model['onnx_bytes'] / 2**20:.0f} MiB"
        + (f", exported in {model['export_s']:.0f} s" if model.get("export_s") else "")
    )
    m = figures["measure"]
    print(f"torch threads {m['torch_threads']}, ORT intra-op threads {m['intra_op_threads']}")
    loads = [f"{x:.1f}" for x in (*m["load_average_before"], *m["load_average_after"])]
    print(f"load average (1, 5, 15 min) before {' '.join(loads[:3])}, after {' '.join(loads[3:])}")
    load = m["load"]
    print(f"import rembg {m['import_rembg_s']:.1f} s; load {load['s']:.1f} s, peak RSS {_gib(load['peak_rss'])}")
    soft = "on" if m["auto_mattes"] else "off"
    width = m["edge_width"]
    print(f"model alone (session.predict) {m['predict_s']:.1f} s; mask edge {width:.2f} px wide (auto: {soft})")
    print("\n| HairOptimization | first cut-out | per image after | peak RSS | peak above loaded |")
    print("|---|---|---|---|---|")
    for hair in ("off", "on"):
        h = m[f"hair_{hair}"]
        median = f"{h['median_s']:.1f} s" if h["median_s"] is not None else "–"
        print(f"| {hair} | {h['first_s']:.1f} s | {median} | {_gib(h['peak_rss'])} | {_gib(h['above'])} |")


def _child(*args: str, home: Path) -> Any:
    """Run this script's measuring mode in a fresh process (none of the export's memory); its JSON."""
    child = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "U2NET_HOME": str(home)},
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="swin_l")
    parser.add_argument("--repeat", type=int, default=3, help="timed cut-outs after the first, per setting")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the ONNX file, reused when there")
    parser.add_argument("--matting-sizes", type=int, nargs="*", default=[1024, 2048, 3072], help="square sizes")
    parser.add_argument("--matting-only", action="store_true", help="no model: only matting by size")
    parser.add_argument("--out", type=Path, default=None, help="write every figure here (JSON)")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--measure-matting", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.repeat)))
        return
    if args.measure_matting:
        print(json.dumps(measure_matting(args.matting_sizes)))
        return

    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="bench-cutout-") as scratch:
        home = Path(scratch) / "rembg-home"
        if not args.matting_only:
            models = (args.keep or Path(scratch)) / f"models-{args.backbone}"
            path = models / "background" / "standin-birefnet.onnx"
            meta = models / "standin.info.json"
            if path.is_file() and meta.is_file():
                figures["model"] = json.loads(meta.read_text())
            else:
                print(f"building and exporting the {args.backbone} stand-in to {path} …", flush=True)
                figures["model"] = {"backbone": args.backbone, **export(args.backbone, path)}
                meta.write_text(json.dumps(figures["model"]))
            (models / "background" / "standin-birefnet.json").write_text(json.dumps({"Session": "birefnet-general"}))
            print("measuring the cut-outs in a fresh process …", flush=True)
            figures["measure"] = _child("--measure", str(models), "--repeat", str(args.repeat), home=home)
        if args.matting_sizes:
            print("measuring matting by size in a fresh process …", flush=True)
            sizes = [str(size) for size in args.matting_sizes]
            figures["matting"] = _child("--measure-matting", "--matting-sizes", *sizes, home=home)
    report(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

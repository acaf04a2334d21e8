"""The image toolkit at 1024² on full-size architectures with random weights: seconds and peak memory.

    .venv/bin/python bench/toolkit.py                         # every action (about 7 minutes on 2 idle cores)
    .venv/bin/python bench/toolkit.py --only faces segment    # some of them
    .venv/bin/python bench/toolkit.py --json                  # the figures as JSON instead of the table
    .venv/bin/python bench/toolkit.py --keep /tmp/tk-models   # keep the built model files, reuse them
    .venv/bin/python bench/toolkit.py --only segment --sam vit_h   # SAM ViT-H too (2.5 GB, minutes)

Each action runs through picserve's engine modules as a worker runs it (the models in a models folder,
found by `catalog.Catalog`, loaded by the module's own cache), never through a reimplementation:

- **faces** (RestoreFaces, `engine/faces.py`): `FaceModels`, `find_faces`, `restore_image`. Restorers:
  GFPGAN v1.4 (spandrel's `GFPGAN` in the fixed configuration spandrel loads it with: 512 out size,
  channel multiplier 2, SFT half) saved as a .pth like the real `GFPGANv1.4.pth` (`params_ema`), and
  RestoreFormer (spandrel's default configuration, the real `RestoreFormer.ckpt`'s), random weights.
  The detector is the tests' tiny YuNet-format graph (tests/engine/face_files.py `write_tiny_yunet`:
  it takes a magenta square filling a 32-px cell of its 32-stride grid for a face 128 px wide); no real
  YuNet weights can be had here. The 1024² pictures hold 1 and 4 such "faces" (64-px markers that
  fill a cell of the 640² copy the detector sees: faces of about 205 px in the image).
- **segment** (ExtractContents, `engine/segment.py`): `PointSegmenters`, `extract` with 2 include
  points and 1 exclude point, HairOptimization off and on (on: `engine/cutout.py`'s alpha matting).
  SAM ViT-B (transformers' `SamConfig()` defaults: 93.7 M parameters, facebook/sam-vit-base's shapes),
  SlimSAM-50 and SlimSAM-77 (the vision widths of nielsr/slimsam-*-uniform: 384/1536 and 168/696),
  and with `--sam vit_l vit_h` the larger SAMs. Saved by `save_pretrained` beside a SamImageProcessor.
  Random SAM weights give logits of about ±0.005 that do not follow the image: a mask that is 0.5
  everywhere, whose matting band would be the whole picture. So, as bench/cutout.py's stand-in does, a
  forward hook on the mask decoder adds to its logits a steep function of the picture's brightness at
  SAM's own 256² mask resolution: the whole network runs, its output is used, and the picture (a light
  disc on a dark ground) gives a realistic mask.
- **describe** (DescribeImages, `engine/describe.py`): `Describers`, `describe`. A BLIP-base captioner
  (transformers' `BlipConfig()` defaults, Salesforce/blip-image-captioning-base's shapes: 224 M
  parameters, the LM head sharing the word embeddings) with a BlipProcessor whose BertTokenizer has a
  vocabulary of BLIP's 30,524 word pieces (filler pieces, BERT's special tokens at their ids, `[DEC]` at
  30522), as tests/engine/caption_files.py builds its tiny one; and a WD-v3-size tagger: timm
  `vit_base_patch16_224` at img_size 448 with 10,861 classes (wd-vit-tagger-v3's, 94.6 M) exported to
  ONNX as caption_files.py's tiny tagger is (NHWC BGR 0..255 in, one sigmoid score per row of
  selected_tags.csv out), with a selected_tags.csv of 10,861 rows (its head's bias set to −2, so about
  50 tags pass 0.35 rather than all). Random BLIP weights never emit the end token, so a caption would
  always run to describe.CAPTION_TOKENS (75) new tokens; the captioner is held to `--caption-tokens`
  (default 20, a real BLIP-base caption's length) by setting its `max_new_tokens`, and the vision
  encoder's and each decoder step's seconds are timed (forward hooks) so that any length can be derived.
- **backgrounds** (GenerateBackgrounds, `specs/backgrounds.py`): the submit-side `layout` of a 1024²
  RGBA foreground (request parsing included), without and with a background image, and the two PNGs
  `from_request` encodes. The SDXL inpainting that follows is a generation (docs/performance.md).

Every model is built and saved in a child process, and every measurement runs in a fresh child process
(so neither a build's memory nor another model's shows in a peak), with glibc's MALLOC_MMAP_THRESHOLD_
at 128 KiB (freed tensors leave the process) as bench/memory.py runs. Each phase's peak RSS is VmHWM,
reset through /proc/self/clear_refs before it (bench/cutout.py's way); "above" is the peak minus the
RSS before the phase (the model loaded). transformers maps safetensors weights instead of reading them,
so a SAM's or BLIP's weights enter the RSS as the first call touches them (counted "above" there).
Each action runs once as the process's first call (timed apart: a worker pays it once), then `--repeat`
times (default 2), and the best is reported with every run, since other jobs may share the cores (the
load average is recorded).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import reset_peak, status  # bench/procstat.py: /proc/self memory figures

ROOT = Path(__file__).resolve().parents[1]
SIZE = 1024
ACTIONS = ("faces", "segment", "describe", "backgrounds")
#: SAM vision configs (transformers' SamVisionConfig fields over its ViT-B defaults)
SAM_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {},
    "slimsam_50": {"hidden_size": 384, "mlp_dim": 1536},
    "slimsam_77": {"hidden_size": 168, "mlp_dim": 696},
    "vit_l": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "global_attn_indexes": [5, 11, 17, 23],
        "mlp_dim": 4096,
    },
    "vit_h": {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "global_attn_indexes": [7, 15, 23, 31],
        "mlp_dim": 5120,
    },
}
DEFAULT_SAMS = ("vit_b", "slimsam_50", "slimsam_77")
#: the real YuNet's parameters (face_detection_yunet_2023mar.onnx), for the report: not measured here
YUNET_PARAMETERS = 75_000
#: wd-vit-tagger-v3's tag count and input side
TAGGER_TAGS, TAGGER_SIDE = 10_861, 448
#: the tagger's CSV: 4 ratings, then general tags, then characters (roughly wd v3's split)
TAGGER_GENERAL = 7_800
#: the 1024² face pictures' marker corners: on the 640² copy the detector sees, cell 10 or 5 and 15
FACES_AT = {1: [(512, 512)], 4: [(256, 256), (768, 256), (256, 768), (768, 768)]}
FACE_MARKER = 64
#: the new tokens a caption is held to: a real BLIP-base caption's length (the random one never ends)
CAPTION_TOKENS = 20
#: ExtractContents' points on the subject picture (a light disc of radius 320 px in the middle)
INCLUDE, EXCLUDE = ((512, 512), (640, 400)), ((60, 60),)


# -- measuring --------------------------------------------------------------------------------------


def _reset_peak() -> int:
    """Trim the heap, reset VmHWM to the current RSS; the RSS now."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return reset_peak()


def phase(what: Callable[[], Any], repeat: int = 1) -> tuple[dict[str, Any], Any]:
    """`what()` run `repeat` times: every run's seconds, the best, the peak RSS over them and the peak above
    the RSS before them; and the last run's result."""
    before = _reset_peak()
    runs, result = [], None
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        result = what()
        runs.append(time.perf_counter() - started)
    peak = status("VmHWM")
    figures = {"runs_s": runs, "best_s": min(runs), "peak_rss": peak, "above": peak - before}
    figures["rss_file"] = status("RssFile")  # mapped files (transformers maps safetensors weights) resident
    return figures, result


def _machine() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_before": os.getloadavg()}


def _parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _timed(module: Any, record: Callable[[float], Any]) -> None:
    """`record(seconds)` after each forward of `module` (forward hooks: the module runs as it would)."""
    started = [0.0]
    module.register_forward_pre_hook(lambda *_: started.__setitem__(0, time.perf_counter()))
    module.register_forward_hook(lambda *_: record(time.perf_counter() - started[0]))


# -- pictures ---------------------------------------------------------------------------------------


def face_picture(count: int) -> Any:
    """1024², a textured ground with `count` light ellipses, each with the tiny detector's magenta marker
    (FACE_MARKER px, a full cell of the detector's 640² copy) in it."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(count)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    ground = np.dstack([40 + xs * 120 // SIZE, 60 + ys * 100 // SIZE, 90 + (xs + ys) * 60 // (2 * SIZE)])
    image = Image.fromarray((ground + rng.integers(0, 24, ground.shape)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for x0, y0 in FACES_AT[count]:
        side = FACE_MARKER
        draw.ellipse((x0 - 1.2 * side, y0 - 1.5 * side, x0 + 2.2 * side, y0 + 2.5 * side), fill=(226, 190, 160))
        draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=(255, 0, 255))
    return image


def subject_picture() -> Any:
    """bench/cutout.py's picture: a light disc (radius 320 px), its edge blurred 2 px, on a dark ground."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    image = Image.new("RGB", (SIZE, SIZE), (20, 24, 28))
    ImageDraw.Draw(image).ellipse(
        (SIZE * 3 // 16, SIZE * 3 // 16, SIZE * 13 // 16, SIZE * 13 // 16), fill=(236, 228, 220)
    )
    image = image.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(image).astype(np.int16) + rng.normal(0, 6, (SIZE, SIZE, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


# -- building the models (child processes) ------------------------------------------------------------


def build_faces(models: Path) -> dict[str, Any]:
    """The tiny YuNet-format detector, GFPGAN v1.4 and RestoreFormer (random) in models/facedetect, faces."""
    import numpy as np
    import onnx
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel.architectures.RestoreFormer import RestoreFormer

    sys.path.insert(0, str(ROOT))
    from tests.engine.face_files import write_tiny_yunet

    yunet = write_tiny_yunet(models / "facedetect" / "yunet.onnx")
    (models / "faces").mkdir(parents=True, exist_ok=True)
    initializers = onnx.load(str(yunet)).graph.initializer
    facts: dict[str, Any] = {"yunet_parameters": sum(int(np.prod(t.dims)) for t in initializers)}
    torch.manual_seed(0)
    # spandrel's GFPGANArch.load builds exactly this (v1.3/v1.4's GFPGANv1Clean)
    gfpgan = GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )
    torch.save({"params_ema": gfpgan.state_dict()}, models / "faces" / "gfpgan-v1.4.pth")
    facts["gfpgan"] = {
        "parameters": _parameters(gfpgan),
        "bytes": (models / "faces" / "gfpgan-v1.4.pth").stat().st_size,
    }
    restoreformer = RestoreFormer()
    torch.save(restoreformer.state_dict(), models / "faces" / "restoreformer.pth")
    facts["restoreformer"] = {
        "parameters": _parameters(restoreformer),
        "bytes": (models / "faces" / "restoreformer.pth").stat().st_size,
    }
    return facts


def build_sam(models: Path, name: str) -> dict[str, Any]:
    """SAM of SAM_CONFIGS[name] (random) saved with its processor as models/segment/sam-NAME/."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel

    folder = models / "segment" / f"sam-{name}"
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=SAM_CONFIGS[name])).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    SamImageProcessor().save_pretrained(str(folder))  # SAM's own: 1024 longest side, padded to 1024²
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"parameters": _parameters(model), "vision": _parameters(model.vision_encoder), "bytes": size}


def build_blip(models: Path) -> dict[str, Any]:
    """BLIP-base (random) with a BlipProcessor over a 30,524-piece vocabulary in models/caption/blip-base/."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = models / "caption" / "blip-base"
    folder.mkdir(parents=True, exist_ok=True)
    config = BlipConfig()
    text = config.text_config
    # bert-base-uncased's layout: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, word pieces;
    # BLIP adds [DEC] (its BOS, 30522) and [ENC]
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" if i % 2 else f"##p{i}" for i in range(len(vocab), text.bos_token_id)]
    vocab += ["[DEC]", "[ENC]"]
    assert len(vocab) == text.vocab_size
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(
        folder, bos_token="[DEC]", additional_special_tokens=["[ENC]"], local_files_only=True
    )
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[SEP]", "[DEC]"])
    assert ids == [text.pad_token_id, text.sep_token_id, text.bos_token_id], ids
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer)  # 384², BLIP's own
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"parameters": _parameters(model), "vision": _parameters(model.vision_model), "bytes": size}


def build_tagger(models: Path) -> dict[str, Any]:
    """A wd-vit-tagger-v3-size tagger (random) as model.onnx + selected_tags.csv in models/caption/wd-vit-v3/."""
    import timm
    import torch

    folder = models / "caption" / "wd-vit-v3"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["tag_id,name,category,count"]
    for i in range(TAGGER_TAGS):
        category = 9 if i < 4 else 0 if i < 4 + TAGGER_GENERAL else 4
        rows.append(f"{i},tag_{i}_{'abc'[i % 3]},{category},{100_000 - i}")
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    torch.manual_seed(0)
    backbone = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=TAGGER_SIDE, num_classes=TAGGER_TAGS
    ).eval()
    with torch.no_grad():  # timm zeroes the head's bias: about 50 tags of 7,800 pass 0.35 instead of all
        backbone.head.bias.fill_(-2.0)

    class Tagger(torch.nn.Module):
        """(1, S, S, 3) BGR 0..255 → (1, N) sigmoid scores, as the wd v3 ONNX files take and give."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).flip(1) / 127.5 - 1.0
            return torch.sigmoid(self.backbone(x))

    sys.path.insert(0, str(ROOT))
    from tests.engine.caption_files import export_tagger

    started = time.perf_counter()
    with torch.inference_mode():
        export_tagger(Tagger().eval(), TAGGER_SIDE, folder / "model.onnx")
    return {
        "parameters": _parameters(backbone),
        "bytes": (folder / "model.onnx").stat().st_size,
        "export_s": time.perf_counter() - started,
    }


BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "faces": build_faces,
    "blip": build_blip,
    "tagger": build_tagger,
    **{f"sam:{name}": (lambda models, name=name: build_sam(models, name)) for name in SAM_CONFIGS},
}


# -- measuring the actions (child processes) ----------------------------------------------------------


def measure_faces(models: Path, restorer: str, repeat: int) -> dict[str, Any]:
    """Detection and RestoreFaces (`restore_image`, strength 1) of the 1- and 4-face pictures with `restorer`."""
    import torch

    from picserve import catalog
    from picserve.engine import faces

    figures: dict[str, Any] = _machine()
    face_models = faces.FaceModels(catalog.Catalog(models, ttl=0), torch.device("cpu"))
    figures["load_detector"], detector = phase(lambda: face_models.detector("yunet"))
    figures["load"], descriptor = phase(lambda: face_models.restorer(restorer))
    figures["architecture"] = descriptor.architecture.name
    figures["parameters"] = _parameters(descriptor.model)
    figures["side"] = faces._model_side(descriptor)
    # the first restore in a process may be slower (allocations, oneDNN's kernel choices): timed apart, as a
    # worker's first task of the kind pays it
    figures["first"], _ = phase(lambda: faces.restore_image(face_models, face_picture(1), restorer, "yunet", 1.0))
    for count in FACES_AT:
        image = face_picture(count)
        figures[f"detect_{count}"], found = phase(lambda image=image: faces.find_faces(detector, image), 5)
        figures[f"detect_{count}"]["faces"] = len(found)
        assert len(found) == count, f"the detector found {len(found)} faces of {count}"
        per_face: list[float] = []
        marks = [0.0]

        def on_face(done: int, total: int, marks: list[float] = marks, per_face: list[float] = per_face) -> None:
            now = time.perf_counter()
            per_face.append(now - marks[0])
            marks[0] = now

        def run(image: Any = image, marks: list[float] = marks) -> Any:
            marks[0] = time.perf_counter()
            return faces.restore_image(face_models, image, restorer, "yunet", 1.0, on_face)

        figures[f"restore_{count}"], result = phase(run, repeat)
        figures[f"restore_{count}"]["per_face_s"] = per_face
        assert result.size == image.size
    figures["load_after"] = os.getloadavg()
    return figures


def _brightness_logits(image: Any, low: int) -> Any:
    """The picture's brightness at SAM's mask resolution as steep logits (bench/cutout.py's stand-in rule:
    40·(grey − 0.5)): what the hook adds to SAM's random logits."""
    import numpy as np
    import torch
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((low, low), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return torch.from_numpy(40.0 * (grey - 0.5))


def measure_segment(models: Path, code: str, repeat: int) -> dict[str, Any]:
    """ExtractContents (`segment.extract`, 2 include and 1 exclude point) of the subject picture with the
    SAM folder `code`, HairOptimization off and on."""
    import torch

    from picserve import catalog
    from picserve.engine import cutout, segment

    figures: dict[str, Any] = _machine()
    segmenters = segment.PointSegmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"), torch.float32)
    figures["load"], (model, processor) = phase(lambda: segmenters.get(code))
    figures["parameters"] = _parameters(model)
    image = subject_picture()
    low = processor.image_processor.mask_pad_size["height"]
    added = _brightness_logits(image, low)

    def realistic(_module: Any, _inputs: Any, output: Any) -> Any:
        masks = output[0]  # (batch, points, candidates, low, low): random logits of about ±0.005
        return (masks + added.to(masks.dtype), *output[1:])

    model.mask_decoder.register_forward_hook(realistic)
    encoder_s: list[float] = []
    _timed(model.vision_encoder, encoder_s.append)
    found: list[Any] = []
    predict = segment.predict

    def recorded(*args: Any, **kwargs: Any) -> Any:  # extract's own predict, its Segmentation kept
        found.append(predict(*args, **kwargs))
        return found[-1]

    finish_s: list[float] = []
    finish = cutout.finish

    def timed_finish(*args: Any, **kwargs: Any) -> Any:  # the cut-out's finish (matting with hair on), timed
        started = time.perf_counter()
        result = finish(*args, **kwargs)
        finish_s.append(time.perf_counter() - started)
        return result

    # observed, not replaced: the Segmentation for the auto-hair rule below, the finish's seconds
    segment.predict, cutout.finish = recorded, timed_finish
    figures["first"], _ = phase(lambda: segment.extract(model, processor, image, INCLUDE, EXCLUDE, hair="off"))
    for hair in ("off", "on"):
        encoder_s.clear()
        finish_s.clear()
        figures[f"hair_{hair}"], result = phase(
            lambda hair=hair: segment.extract(model, processor, image, INCLUDE, EXCLUDE, hair=hair), repeat
        )
        figures[f"hair_{hair}"]["encoder_s"] = list(encoder_s)
        figures[f"hair_{hair}"]["finish_s"] = list(finish_s)
        alpha = result.getchannel("A")
        figures[f"hair_{hair}"]["opaque_share"] = sum(alpha.histogram()[255:]) / SIZE**2
    segment.predict, cutout.finish = predict, finish
    last = found[-1]
    figures["output"], figures["agreed"] = last.output, last.agreed
    figures["edge_width"] = cutout.edge_width(last.mask, last.model_size)
    figures["auto_mattes"] = cutout.is_soft(last.mask, last.model_size)
    figures["load_after"] = os.getloadavg()
    return figures


def measure_describe(models: Path, code: str, repeat: int, caption_tokens: int) -> dict[str, Any]:
    """DescribeImages (`Describers.get(code).describe`) of a 1024² picture; a captioner held to
    `caption_tokens` new tokens (0: the module's own bound, describe.CAPTION_TOKENS)."""
    import torch

    from picserve import catalog
    from picserve.engine import describe

    figures: dict[str, Any] = _machine()
    describers = describe.Describers(catalog.Catalog(models, ttl=0), torch.device("cpu"))
    figures["load"], model = phase(lambda: describers.get(code))
    image = face_picture(4)
    vision_s: list[float] = []
    steps_s: list[list[float]] = []
    if isinstance(model, describe.Captioner):
        figures["parameters"] = _parameters(model.model)
        figures["vision_parameters"] = _parameters(model.model.vision_model)
        figures["max_new_tokens"] = model.max_new_tokens = caption_tokens or model.max_new_tokens
        _timed(model.model.vision_model, vision_s.append)
        _timed(model.model.text_decoder, lambda s: steps_s[-1].append(s))

    def run() -> list[str]:
        steps_s.append([])
        return model.describe([image])

    figures["first"], _ = phase(run)
    vision_s.clear()
    steps_s.clear()
    figures["describe"], texts = phase(run, repeat)
    figures["describe"]["vision_s"] = vision_s
    figures["describe"]["steps_s"] = steps_s
    figures["words"] = len(texts[0].split(", " if isinstance(model, describe.Tagger) else " "))
    figures["load_after"] = os.getloadavg()
    return figures


def measure_backgrounds(repeat: int) -> dict[str, Any]:
    """GenerateBackgrounds' submit side: `backgrounds.layout` of a 1024² RGBA foreground (parsing the
    request included), without and with a background image; the two PNGs `from_request` encodes."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from picserve import reference_images
    from picserve.protocol import messages
    from picserve.specs import backgrounds

    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    subject = subject_picture()
    alpha = Image.fromarray(np.where(np.asarray(subject.convert("L")) > 128, 255, 0).astype(np.uint8), "L")
    foreground = subject.convert("RGBA")
    foreground.putalpha(alpha)

    def b64(image: Any) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    fg, bg = b64(foreground), b64(face_picture(1))
    body = {
        "MainModel": {"ModelCode": "sdxl"},
        "PositivePrompts": ["a marble table in a sunny kitchen"],
        "ImageList": [fg],
        "TransparentForeground": {"ImageIndex": 0},
    }
    cases = {
        "no_background": body,
        "background": {**body, "ImageList": [fg, bg], "BackgroundImage2Image": {"ImageIndex": 1}},
        "background_deep_fusion": {
            **body,
            "ImageList": [fg, bg],
            "BackgroundImage2Image": {"ImageIndex": 1, "DeepFusion": True},
        },
    }
    for name, request in cases.items():

        def lay_out(request: dict[str, Any] = request) -> Any:
            return backgrounds.layout(messages.parse(messages.GenerateBackgrounds, request))

        figures[name], (canvas, mask, strength) = phase(lay_out, max(5, repeat))
        figures[name]["strength"] = strength
        figures[name]["painted_share"] = float(np.count_nonzero(np.asarray(mask)) / SIZE**2)
        figures[f"{name}_png"], _ = phase(
            lambda canvas=canvas, mask=mask: (reference_images.png_base64(canvas), reference_images.png_base64(mask)),
            max(5, repeat),
        )
    figures["load_after"] = os.getloadavg()
    return figures


def measure(what: str, models: Path, repeat: int, caption_tokens: int) -> dict[str, Any]:
    kind, _, name = what.partition(":")
    if kind == "faces":
        return measure_faces(models, name, repeat)
    if kind == "segment":
        return measure_segment(models, name, repeat)
    if kind == "describe":
        return measure_describe(models, name, repeat, caption_tokens)
    if kind == "backgrounds":
        return measure_backgrounds(repeat)
    raise ValueError(what)


# -- the parent ---------------------------------------------------------------------------------------


def _child(*args: str) -> Any:
    """This script in a fresh process (glibc returning freed memory at once); the JSON it prints last."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "TRANSFORMERS_VERBOSITY": "error"}
    env["HF_HUB_OFFLINE"] = "1"
    child = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _built(models: Path, what: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The facts of model `what` in `models`, building it (in a child) unless it is there."""
    facts_file = models / f".{what.replace(':', '-')}.json"
    if facts_file.is_file():
        return json.loads(facts_file.read_text())
    log(f"building {what} …")
    started = time.perf_counter()
    facts = _child("--build", what, "--models", str(models))
    facts["build_s"] = time.perf_counter() - started
    facts_file.write_text(json.dumps(facts))
    return facts


def run_all(models: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Build what the chosen actions need (unless `models` has it) and measure each in a fresh process."""
    only, repeat = args.only, args.repeat
    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "repeat": repeat,
        "caption_tokens": args.caption_tokens,
        "built": {},
        "measured": {},
    }
    started = time.perf_counter()
    plan: list[tuple[str | None, str]] = []
    if "faces" in only:
        plan += [("faces", "faces:gfpgan-v1.4"), ("faces", "faces:restoreformer")]
    if "segment" in only:
        plan += [(f"sam:{name}", f"segment:sam-{name}") for name in args.sam]
    if "describe" in only:
        plan += [("blip", "describe:blip-base"), ("tagger", "describe:wd-vit-v3")]
    if "backgrounds" in only:
        plan += [(None, "backgrounds")]
    for build, what in plan:
        if build is not None and build not in figures["built"]:
            figures["built"][build] = _built(models, build, log)
        log(f"measuring {what} …")
        figures["measured"][what] = _child(
            "--measure",
            what,
            "--models",
            str(models),
            "--repeat",
            str(repeat),
            "--caption-tokens",
            str(args.caption_tokens),
        )
    figures["total_s"] = time.perf_counter() - started
    return figures


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _runs(p: dict[str, Any]) -> str:
    if len(p["runs_s"]) == 1:
        return f"{p['best_s']:.2f}"
    return f"{p['best_s']:.2f} ({', '.join(f'{s:.2f}' for s in p['runs_s'])})"


def report(figures: dict[str, Any]) -> None:
    """The figures as a markdown table, with notes under it."""
    measured, built = figures["measured"], figures["built"]
    notes: list[str] = []
    print(
        f"\n{figures['machine']}; seconds: after a first call, the best of {figures['repeat']} runs "
        "(every run in brackets)\n"
    )
    print("| action | model (parameters) | case | seconds | peak RSS GiB | peak above loaded GiB |")
    print("|---|---|---|---|---|---|")

    def row(action: str, model: str, case: str, p: dict[str, Any], seconds: str | None = None) -> None:
        print(f"| {action} | {model} | {case} | {seconds or _runs(p)} | {_gib(p['peak_rss'])} | {_gib(p['above'])} |")

    for restorer in ("gfpgan-v1.4", "restoreformer"):
        m = measured.get(f"faces:{restorer}")
        if m is None:
            continue
        model = f"{m['architecture']} ({m['parameters'] / 1e6:.1f} M)"
        row("RestoreFaces", model, "load (FaceModels.restorer)", m["load"])
        row("RestoreFaces", model, "first restore_image in the process (1 face)", m["first"])
        for count in FACES_AT:
            r = m[f"restore_{count}"]
            row("RestoreFaces", model, f"1024², {count} face{'s' * (count > 1)} (restore_image)", r)
        faces_s = m["restore_1"]["per_face_s"] + m["restore_4"]["per_face_s"]
        ratio = m["restore_4"]["best_s"] / m["restore_1"]["best_s"]
        notes.append(
            f"{m['architecture']}: per face (aligned {m['side']}², run, pasted) best {min(faces_s):.2f} s, median "
            f"{statistics.median(faces_s):.2f} s of {len(faces_s)}; 4 faces take {ratio:.1f}× one face's time"
        )
        d1, d4 = m["detect_1"], m["detect_4"]
        detector = f"tiny YuNet-format ({built.get('faces', {}).get('yunet_parameters', 0)} params)"
        print(
            f"| face detection | {detector} | find_faces on 1024² (a 640² copy), 1 / 4 faces, best of 5 | "
            f"{d1['best_s'] * 1e3:.0f} / {d4['best_s'] * 1e3:.0f} ms | – | – |"
        )
    for name in SAM_CONFIGS:
        m = measured.get(f"segment:sam-{name}")
        if m is None:
            continue
        model = f"SAM {name} ({m['parameters'] / 1e6:.1f} M)"
        row("ExtractContents", model, "load (PointSegmenters.get)", m["load"])
        row("ExtractContents", model, "first extract in the process (hair off)", m["first"])
        for hair in ("off", "on"):
            h = m[f"hair_{hair}"]
            parts = f"image encoder {min(h['encoder_s']):.2f} s, finish {min(h['finish_s']):.2f} s"
            row("ExtractContents", model, f"1024², 2+1 points, hair {hair} ({parts})", h)
        notes.append(
            f"SAM {name}: SAM's {m['output']} mask{'' if m['agreed'] else ' (points pinned)'}; mask edge "
            f"{m['edge_width']:.2f} px at SAM's 256²: auto {'mattes' if m['auto_mattes'] else 'does not matte'}"
        )
    for code, label in (("blip-base", "BLIP-base captioner"), ("wd-vit-v3", "WD-v3-size tagger")):
        m = measured.get(f"describe:{code}")
        if m is None:
            continue
        parameters = m.get("parameters") or built.get("tagger", {}).get("parameters", 0)
        model = f"{label} ({parameters / 1e6:.1f} M)"
        row("DescribeImages", model, "load (Describers.get)", m["load"])
        row("DescribeImages", model, "first describe in the process", m["first"])
        d = m["describe"]
        if "max_new_tokens" in m:
            steps = [s for run in d["steps_s"] for s in run]
            step, vision = statistics.median(steps), min(d["vision_s"])
            row("DescribeImages", model, f"1024² → caption ({m['max_new_tokens']} tokens, 3 beams)", d)
            notes.append(
                f"BLIP-base: vision encoder (384²) {vision:.2f} s, a decoder step (3 beams) {step:.3f} s "
                f"(median of {len(steps)}); derived, not run: a 75-token caption (describe.CAPTION_TOKENS, "
                f"what random weights would run to) ≈ {vision + 75 * step:.1f} s"
            )
        else:
            row("DescribeImages", model, f"1024² → tags ({m['words']} kept)", d)
    m = measured.get("backgrounds")
    if m is not None:
        for case in ("no_background", "background", "background_deep_fusion"):
            p, png = m[case], m[f"{case}_png"]
            what = f"layout, {case.replace('_', ' ')} (strength {p['strength']}; paints {p['painted_share']:.0%})"
            row("GenerateBackgrounds", "– (submit side)", what, p, f"{p['best_s'] * 1e3:.0f} ms")
            notes.append(f"GenerateBackgrounds {case.replace('_', ' ')}: + the 2 PNGs {png['best_s'] * 1e3:.0f} ms")
    for note in notes:
        print(f"- {note}")
    loads = [m["load_before"][0] for m in measured.values()] + [m["load_after"][0] for m in measured.values()]
    if loads:
        print(f"\nload average (1 min) around the runs: {min(loads):.1f} to {max(loads):.1f}")
    print(f"total {figures['total_s']:.0f} s")
    for name, facts in built.items():
        extra = f", built in {facts['build_s']:.0f} s" if "build_s" in facts else ""
        for arch, f in (
            [("gfpgan", facts["gfpgan"]), ("restoreformer", facts["restoreformer"])]
            if name == "faces"
            else [(name, facts)]
        ):
            print(f"built {arch}: {f['parameters']:,} parameters, {f['bytes'] / 2**20:.0f} MiB{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ACTIONS, default=list(ACTIONS), help="the actions to measure")
    parser.add_argument(
        "--sam", nargs="+", choices=sorted(SAM_CONFIGS), default=list(DEFAULT_SAMS), help="the SAM sizes"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each action (the best is reported)")
    parser.add_argument(
        "--caption-tokens",
        type=int,
        default=CAPTION_TOKENS,
        help="new tokens a caption is held to (random BLIP never ends one; 0: the module's bound, 75)",
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON instead of the table")
    parser.add_argument("--out", type=Path, default=None, help="also write every figure there (JSON)")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the built models, reused when there")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.build is not None or args.measure is not None:
        importlib.import_module("picserve")  # first: it makes torchvision importable beside the CPU torch
    if args.build is not None:
        print(json.dumps(BUILDERS[args.build](args.models)))
        return
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.models, args.repeat, args.caption_tokens)))
        return

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-toolkit-") as scratch:
        models = args.keep or Path(scratch) / "models"
        models.mkdir(parents=True, exist_ok=True)
        figures = run_all(models, args, log)
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        report(figures)


if __name__ == "__main__":
    main()

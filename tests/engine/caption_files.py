"""Tiny caption models, saved as the folders users install in models/caption.

- `write_tiny_blip`: a BlipForConditionalGeneration of random weights (a 2-layer ViT over 64² images
  and a 2-layer BERT decoder), saved with its BlipProcessor, whose tokenizer is a BertTokenizer over a
  small word-piece vocabulary written here (with BLIP's `[DEC]` as its BOS). What it says is gibberish
  of that vocabulary; the real loading, processing, beam search and decoding path runs.
- `write_tiny_florence2`: a Florence2ForConditionalGeneration (transformers-native; a 4-stage DaViT of
  one block each and a 1+1-layer BART) with its Florence2Processor over a byte-level BPE vocabulary of
  the 256 bytes and `<image>`: the task-prompt path (`<MORE_DETAILED_CAPTION>`) runs.
- `write_tiny_tagger`: a WD-style tagger: an ONNX model exported from a small torch module taking
  (1, S, S, 3) BGR floats 0..255 and giving one sigmoid score per row of its selected_tags.csv
  (`tag_id,name,category,count`), the four rating rows first as in the wd v3 files; optionally with the
  timm `config.json` those repositories ship beside them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

__all__ = ["TAGS", "export_tagger", "write_tiny_blip", "write_tiny_florence2", "write_tiny_tagger"]

_WORDS = (
    "a an the of with on in at and photo picture painting drawing cat dog woman man girl boy city street "
    "night day snow beach sea sky tree house car red blue green white black small large sitting standing "
    "walking looking wearing holding"
).split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"

#: (name, category) of the tiny tagger's rows: ratings (9), general tags (0), characters (4)
TAGS = (
    ("general", 9),
    ("sensitive", 9),
    ("questionable", 9),
    ("explicit", 9),
    ("1girl", 0),
    ("solo", 0),
    ("long_hair", 0),
    ("smile", 0),
    ("^_^", 0),
    ("blue_sky", 0),
    ("looking_at_viewer", 0),
    ("outdoors", 0),
    ("simple_background", 0),
    ("white_background", 0),
    ("hatsune_miku_(vocaloid)", 4),
    ("kafuu_chino", 4),
    ("hakurei_reimu", 4),
    ("school_uniform", 0),
    ("holding_umbrella", 0),
    ("cat_ears", 0),
)


def write_tiny_blip(folder: Path, seed: int = 0, side: int = 64) -> Path:
    """A tiny random BLIP captioner with its processor in `folder` (see the module docstring)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *_WORDS]
    vocab += [c for c in _LETTERS if c not in vocab] + [f"##{c}" for c in _LETTERS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(folder, bos_token="[DEC]", local_files_only=True)
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[SEP]", "[DEC]"])
    assert ids == [0, 3, 5] and len(tokenizer) == len(vocab), "the tiny vocabulary did not load"
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 128,
            "encoder_hidden_size": 32,
            "pad_token_id": 0,
            "bos_token_id": 5,
            "eos_token_id": 3,
            "sep_token_id": 3,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # random, but far from uniform: each image's caption is its own
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}), tokenizer=tokenizer
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_florence2(folder: Path, seed: int = 0, side: int = 64) -> Path:
    """A tiny random Florence-2 with its processor in `folder` (see the module docstring)."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = BartTokenizer.from_pretrained(
        folder, local_files_only=True, extra_special_tokens={"image_token": "<image>"}
    )
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    config = Florence2Config(
        vision_config={
            "depths": [1, 1, 1, 1],
            "embed_dim": [8, 16, 16, 32],
            "num_heads": [1, 1, 1, 2],
            "num_groups": [1, 1, 1, 2],
            "window_size": 2,
            "projection_dim": 32,
            "drop_path_rate": 0.0,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 512,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
        },
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"height": side, "width": side},
        crop_size={"height": side, "width": side},
        do_center_crop=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    image_processor.image_seq_length = (side // 32) ** 2 + 1  # the stages' stride 32, and the pooled token
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


class _TinyTagger(torch.nn.Module):
    """(1, S, S, 3) BGR 0..255 → (1, N) sigmoid scores, from a 4×4 strided convolution's mean features."""

    def __init__(self, count: int, rating_rows: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 4, 4)
        self.head = torch.nn.Linear(8, count)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * 2.0)
            self.head.bias.copy_(torch.randn(count, generator=generator))
            self.head.bias[:rating_rows] += 8.0  # the ratings score high: leaving them out is seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2) / 255.0 - 0.5
        features = torch.tanh(self.conv(x)).mean(dim=(2, 3))
        return torch.sigmoid(self.head(features))


def export_tagger(module: torch.nn.Module, side: int, path: Path) -> None:
    """`module` ((N, side, side, 3) image → (N, tags) scores) as a WD-style tagger's `model.onnx` at `path`,
    its batch dynamic, with the input and output names the wd v3 files have (also bench/toolkit.py's writer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(1, side, side, 3),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def write_tiny_tagger(
    folder: Path,
    tags: tuple[tuple[str, int], ...] = TAGS,
    side: int = 32,
    seed: int = 0,
    timm_config: bool = False,
) -> Path:
    """A tiny WD-style tagger (model.onnx + selected_tags.csv) in `folder`; `timm_config`: with the timm
    config.json a wd v3 repository has beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["tag_id,name,category,count"]
    rows += [f'{1000 + i},"{name}",{category},{5000 - i}' for i, (name, category) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    export_tagger(_TinyTagger(len(tags), sum(1 for _, c in tags if c == 9), seed).eval(), side, folder / "model.onnx")
    if timm_config:
        config = {
            "architecture": "vit_base_patch16_224",
            "num_classes": len(tags),
            "num_features": 8,
            "global_pool": "avg",
            "pretrained_cfg": {"input_size": [3, side, side], "mean": [0.5] * 3, "std": [0.5] * 3},
        }
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder

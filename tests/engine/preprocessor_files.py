"""Preprocessor model files for the tests, as operators install them in models/preprocessor/.

`write_lineart` saves controlnet_aux's own line-art network (`lineart.Generator(3, 1, 3)`, the class
`sk_model.pth` and `sk_model2.pth` hold) at random init, in the file's layout (a plain state dict): the
loading path is the real one, only the weights are not trained. About 4 M parameters, 17 MB.
`write_tiny_depth_model` saves a transformers Depth Anything model of a few tens of thousands of
parameters (a 4-layer DINOv2 of width 16) and its DPT image processor (56 px input) into a folder, as
`save_pretrained` writes a hub download. `write_not_a_checkpoint` writes bytes no loader takes.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "aux",
    "write_lineart",
    "write_not_a_checkpoint",
    "write_tiny_depth_model",
    "write_unrelated_model_folder",
]


def aux(name: str) -> Any:
    """A controlnet_aux module, imported without its import-time warnings (timm's, scipy's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{name}")


def write_lineart(path: Path, seed: int = 0) -> Path:
    """controlnet_aux's line-art Generator at random init (seeded), saved as A1111's sk_model files are."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(aux("lineart").Generator(3, 1, 3).state_dict(), path)
    return path


def write_tiny_depth_model(folder: Path, seed: int = 0) -> Path:
    """A random tiny Depth Anything (model_type depth_anything) with its image processor, in `folder`."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=14,
        image_size=56,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[4, 8, 16, 16],
        fusion_hidden_size=8,
        head_hidden_size=4,
        patch_size=14,
    )
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def write_unrelated_model_folder(folder: Path) -> Path:
    """A transformers-looking folder of another model type (not a depth model)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


def write_not_a_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is no torch checkpoint\n" * 4)
    return path

"""Tiny random ControlNets fitted to the tiny SDXL UNet, saved the ways users get them: a diffusers
folder and a single .safetensors file with diffusers keys; plain and ControlNet-Union."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["build_controlnet", "write_controlnet"]


def build_controlnet(unet: Any, union: bool = False, seed: int = 1) -> Any:
    """A random ControlNet (or ControlNet-Union) of `unet`'s widths. Its zero convolutions are random
    too (a trained ControlNet's are not zero), so that it changes the image."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    if union:
        # ControlNetUnionModel.from_unet breaks on a tiny UNet (num_trans_channel defaults to 320): built directly
        width = unet.config.block_out_channels[0]
        config = {
            k: v for k, v in dict(unet.config).items() if k in ControlNetUnionModel._get_init_keys(ControlNetUnionModel)
        }
        config.update(num_trans_channel=width, num_proj_channel=width, num_trans_head=2, num_control_type=8)
        config.pop("in_channels", None)
        model = ControlNetUnionModel(
            **{**config, "in_channels": 4}, conditioning_embedding_out_channels=(8, 16, 16, 16)
        )
    else:
        model = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(8, 16, 16, 16), load_weights_from_unet=False
        )
        if unet.config.in_channels != 4:
            raise ValueError("build ControlNets from a 4-channel UNet")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "zero" in name or name.startswith(
                ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            ):
                param.normal_(0, 0.05)
    return model.eval()


def write_controlnet(unet: Any, path: Path, union: bool = False, seed: int = 1) -> Path:
    """Save a tiny ControlNet at `path`: a folder (no suffix) or a .safetensors single file."""
    from safetensors.torch import save_file

    model = build_controlnet(unet, union=union, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        model.save_pretrained(path)
    return path


def tiny_unet(models_dir: Path, cross_attention_dim: int | None = None) -> Any:
    """The tiny SDXL's UNet at random init, from its saved config (what a ControlNet is fitted to);
    another `cross_attention_dim` makes a UNet of another base model (768: SD1's)."""
    import json

    from diffusers import UNet2DConditionModel

    config = json.loads((models_dir / "main" / "picserve-tiny-diffusers" / "unet" / "config.json").read_text())
    if cross_attention_dim is not None:
        config["cross_attention_dim"] = cross_attention_dim
    return UNet2DConditionModel.from_config(config)


#: the control models the test models folder holds: file name → (union, cross-attention width, sidecar,
#: seed); tiny-union and tiny-union-folder are one model saved both ways
CONTROL_MODELS: dict[str, tuple[bool, int | None, dict[str, Any] | None, int]] = {
    "tiny-canny.safetensors": (False, None, None, 1),
    "tiny-depth": (False, None, {"Name": "Tiny depth", "InferenceParams": {"ControlWeight": 0.8}}, 2),
    "tiny-union.safetensors": (True, None, None, 3),
    "tiny-union-folder": (True, None, None, 3),
    "sd15-canny.safetensors": (False, 768, None, 4),
}


#: the IP-Adapters the test models folder holds (models/ipadapter) and their encoder (models/image_encoder)
IP_ADAPTERS = {"tiny-ip-adapter.safetensors": False, "tiny-ip-adapter-plus.safetensors": True}
IMAGE_ENCODER = "tiny-vit-h"


def add_control_models(models_dir: Path) -> None:
    """Write CONTROL_MODELS into `models_dir/controlnet/`, IP_ADAPTERS into `models_dir/ipadapter/` and
    their image encoder into `models_dir/image_encoder/` (those missing)."""
    import json

    from tests.engine.ipadapter_files import write_image_encoder, write_ip_adapter

    if not (models_dir / "image_encoder" / IMAGE_ENCODER / "config.json").exists():
        write_image_encoder(models_dir / "image_encoder" / IMAGE_ENCODER)
    for name, plus in IP_ADAPTERS.items():
        if not (models_dir / "ipadapter" / name).exists():
            (models_dir / "ipadapter").mkdir(parents=True, exist_ok=True)
            write_ip_adapter(models_dir / "ipadapter" / name, plus=plus)
    # the plain one is ApplyReferenceStyle's default (two are installed)
    (models_dir / "ipadapter" / "tiny-ip-adapter.json").write_text(json.dumps({"Default": True}))

    folder = models_dir / "controlnet"
    for name, (union, cross, sidecar, seed) in CONTROL_MODELS.items():
        path = folder / name
        if path.exists():
            continue
        write_controlnet(tiny_unet(models_dir, cross), path, union=union, seed=seed)
        if sidecar is not None:
            (folder / f"{path.stem}.json").write_text(json.dumps(sidecar))

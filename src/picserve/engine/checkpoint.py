"""Export a diffusers SDXL pipeline as one original-layout (SGM) `.safetensors` checkpoint, or its VAE
alone as a standalone original-layout VAE file.

This is the layout users download from model sites and that `from_single_file` reads. picserve uses it
to give its tiny test model the same single-file loading path as a real checkpoint. The key tables
follow diffusers' `scripts/convert_diffusers_to_original_sdxl.py` (the inverse of its loader), derived
here from the model configs instead of hard-coded block counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["export_single_file", "export_vae", "sgm_state_dict", "sgm_unet_key", "vae_state_dict"]

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))

StateDict = dict[str, torch.Tensor]


def _unet_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """diffusers module prefix → SGM prefix, for every block of the UNet."""
    layers = config["layers_per_block"]
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    out = dict(_UNET_TOP)
    for i, kind in enumerate(down_types):
        for j in range(layers):
            out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.0"
            if kind.startswith("CrossAttn"):
                out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.1"
        if i < len(down_types) - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op"
    out["mid_block.attentions.0"] = "middle_block.1"
    for j in range(2):
        out[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    for i, kind in enumerate(up_types):
        has_attention = kind.startswith("CrossAttn")
        for j in range(layers + 1):
            out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(layers + 1) * i + j}.0"
            if has_attention:
                out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(layers + 1) * i + j}.1"
        if i < len(up_types) - 1:
            slot = 2 if has_attention else 1
            out[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(layers + 1) * i + layers}.{slot}"
    return out


def _vae_prefixes(config: dict[str, Any]) -> dict[str, str]:
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    out: dict[str, str] = {}
    for i in range(levels):
        for j in range(layers):
            out[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        for j in range(layers + 1):
            out[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        if i < levels - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
            out[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    for part in ("encoder", "decoder"):
        for k in range(2):
            out[f"{part}.mid_block.resnets.{k}"] = f"{part}.mid.block_{k + 1}"
        out[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        out[f"{part}.conv_norm_out"] = f"{part}.norm_out"
    return out


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str | None]:
    """Longest diffusers prefix of `key` → (renamed key, matched diffusers prefix)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            return prefixes[head] + "." + ".".join(parts[cut:]), head
    return key, None


def _convert_unet(state: StateDict, config: dict[str, Any]) -> StateDict:
    prefixes, out = _unet_prefixes(config), {}
    for key, value in state.items():
        new, head = _rename(key, prefixes)
        if head and ".resnets." in head:
            tail = new[len(prefixes[head]) + 1 :]
            for old, replacement in _RESNET:
                if tail.startswith(old + "."):
                    tail = replacement + tail[len(old) :]
            new = prefixes[head] + "." + tail
        out["model.diffusion_model." + new] = value
    return out


def _convert_vae(state: StateDict, config: dict[str, Any]) -> StateDict:
    prefixes, out = _vae_prefixes(config), {}
    for key, value in state.items():
        new, head = _rename(key, prefixes)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if head and head.endswith("attentions.0"):
            tail = new[len(prefixes[head]) + 1 :]
            for old, replacement in _VAE_ATTN:
                if tail.startswith(old + "."):
                    tail = replacement + tail[len(old) :]
            new = prefixes[head] + "." + tail
            if value.ndim == 2:  # linear in diffusers, 1×1 conv in the original
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _convert_clip_l(state: StateDict) -> StateDict:
    # transformers ≥ 5.6 flattens CLIPTextModel (no `text_model.` prefix); the original layout has it.
    prefix = "conditioner.embedders.0.transformer."
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def _convert_open_clip(state: StateDict) -> StateDict:
    prefix = "conditioner.embedders.1.model."
    out: StateDict = {}
    # OpenCLIP keeps q, k and v in one in_proj tensor: SGM key → {"q_proj": …, "k_proj": …, "v_proj": …}
    qkv: dict[str, StateDict] = {}
    names = (
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
        ("self_attn.out_proj", "attn.out_proj"),
    )
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".")[-1]] = value
        elif key.startswith("encoder.layers."):
            _, _, index, rest = key.split(".", 3)
            block = f"{prefix}transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                proj, kind = rest.split(".")[1], rest.split(".")[2]
                qkv.setdefault(block + "attn.in_proj_" + kind, {})[proj] = value
                continue
            for old, new in names:
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
            out[block + rest] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def sgm_unet_key(key: str, config: dict[str, Any]) -> str:
    """A diffusers UNet parameter's name (`down_blocks.1.attentions.0.proj_in.weight`) in the original
    SGM layout, without the `model.diffusion_model.` prefix (`input_blocks.4.1.proj_in.weight`)."""
    (renamed,) = _convert_unet({key: torch.empty(0)}, config)
    return renamed.removeprefix("model.diffusion_model.")


def sgm_state_dict(pipe: Any) -> StateDict:
    """The pipeline's weights under original SDXL (SGM) key names."""
    state: StateDict = {}
    state.update(_convert_unet(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(_convert_vae(pipe.vae.state_dict(), dict(pipe.vae.config)))
    state.update(_convert_clip_l(pipe.text_encoder.state_dict()))
    state.update(_convert_open_clip(pipe.text_encoder_2.state_dict()))
    return {k: v.detach().contiguous() for k, v in state.items()}


def vae_state_dict(vae: Any) -> StateDict:
    """An AutoencoderKL's weights under original (LDM) key names, as a standalone VAE file has them
    (`decoder.conv_out.weight`, no `first_stage_model.` prefix)."""
    state = _convert_vae(vae.state_dict(), dict(vae.config))
    return {k.removeprefix("first_stage_model."): v.detach().contiguous() for k, v in state.items()}


def export_vae(vae: Any, path: Path) -> Path:
    """Write an AutoencoderKL as a standalone original-layout `.safetensors` VAE (as users download them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(vae_state_dict(vae), str(path))
    return path


def export_single_file(pipe: Any, path: Path) -> Path:
    """Write `pipe` as one original-layout `.safetensors` checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sgm_state_dict(pipe), str(path), metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    return path

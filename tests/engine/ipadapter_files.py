"""Tiny IP-Adapter files and CLIP vision encoders of the real formats, sized for picserve's tiny SDXL.

Operators download h94/IP-Adapter's files: `sdxl_models/ip-adapter_sdxl.safetensors` (plain, for the
ViT-bigG encoder in `sdxl_models/image_encoder`), `sdxl_models/ip-adapter_sdxl_vit-h.safetensors` (plain,
for the ViT-H encoder in `models/image_encoder`) and `sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors`
(Plus, ViT-H). These writers make the same files with random weights, at the tiny model's widths:

- `write_image_encoder(folder)`: a `CLIPVisionModelWithProjection` saved with `save_pretrained`
  (config.json, model.safetensors), as h94's encoder folders hold it, plus a `CLIPImageProcessor`'s
  preprocessor_config.json (the one diffusers' `load_ip_adapter` would build itself for that image size:
  it never reads the file, picserve's engine does when it is there).
- `write_ip_adapter(path, plus=False)`: one .safetensors in h94's flat layout, float16 as h94's are.
  `image_proj.*` is the image projection: plain IP-Adapter (`proj.weight` (4·cross, image_embeds),
  `proj.bias`, `norm.*`: four tokens from the encoder's projected `image_embeds`), or Plus (the
  Resampler of IP-Adapter's repo: `latents` (1, 16, hidden), `proj_in`, four layers of
  `layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}` and `layers.<i>.1.{0,1,3}` (its LayerNorm and MLP),
  `proj_out`, `norm_out`: 16 tokens from the encoder's penultimate hidden states). `ip_adapter.<n>` holds
  `to_k_ip.weight` and `to_v_ip.weight` (hidden, cross) of each cross-attention, numbered as h94 numbers
  them: n = 1, 3, 5, … over the UNet's attention processors in `unet.attn_processors` order (down
  blocks, up blocks, then the mid block; the self-attentions, which have no weights, take the even
  numbers).

The tiny UNet (engine/tiny.py) has cross-attention width 96 and 17 cross-attentions (`TINY_LAYERS`:
32 or 64 wide); a real SDXL has 2048 and 70 (640 or 1280 wide). `TINY_VIT_H` and `TINY_VIT_BIGG` are
two encoders of different widths, so that a request mixing them (a plain bigG adapter with a Plus ViT-H
one) is tested as it happens with the real files.

Random weights are scaled as initialisations are (1/√fan-in), so the adapters change the tiny model's
images visibly and never overflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import picserve  # noqa: F401  (before transformers: its torchvision shim, picserve/torchvision_compat.py)

__all__ = [
    "H94_FILES",
    "TINY_CROSS",
    "TINY_LAYERS",
    "TINY_VIT_BIGG",
    "TINY_VIT_H",
    "write_h94",
    "write_image_encoder",
    "write_ip_adapter",
    "write_not_an_ip_adapter",
]

#: the tiny UNet's cross-attention width (engine/tiny.py)
TINY_CROSS = 96
#: the hidden width of each cross-attention of the tiny UNet, in `unet.attn_processors` order: down
#: blocks 1 (2 × 32) and 2 (2 attentions × 2 layers × 64), up blocks 0 (3 × 2 × 64) and 1 (3 × 32), mid (2 × 64)
TINY_LAYERS = (32,) * 2 + (64,) * 4 + (64,) * 6 + (32,) * 3 + (64,) * 2
#: a tiny stand-in for h94's `models/image_encoder` (OpenCLIP ViT-H/14: hidden 1280, projection 1024)
TINY_VIT_H = {"hidden_size": 32, "projection_dim": 24}
#: a tiny stand-in for `sdxl_models/image_encoder` (OpenCLIP ViT-bigG/14: hidden 1664, projection 1280)
TINY_VIT_BIGG = {"hidden_size": 40, "projection_dim": 28}
#: h94/IP-Adapter's SDXL files: path in the repository → (Plus?, its encoder folder, that encoder's widths)
H94_FILES = {
    "sdxl_models/ip-adapter_sdxl.safetensors": (False, "sdxl_models/image_encoder", TINY_VIT_BIGG),
    "sdxl_models/ip-adapter_sdxl_vit-h.safetensors": (False, "models/image_encoder", TINY_VIT_H),
    "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors": (True, "models/image_encoder", TINY_VIT_H),
}
#: the Resampler's layers (IP-Adapter's Plus; diffusers' conversion knows exactly four)
_PLUS_DEPTH = 4
#: the Resampler's attention head width (fixed at 64: diffusers reads the heads as to_q's rows ÷ 64)
_PLUS_HEAD = 64


def write_image_encoder(
    folder: Path,
    hidden_size: int = TINY_VIT_H["hidden_size"],
    projection_dim: int = TINY_VIT_H["projection_dim"],
    layers: int = 3,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 0,
) -> Path:
    """A tiny CLIP vision encoder with projection saved in `folder` (created): config.json,
    model.safetensors and preprocessor_config.json. 32 px images in 8 px patches: 17 tokens of
    `hidden_size`; `image_embeds` of `projection_dim`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        projection_dim=projection_dim,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    CLIPImageProcessor(size=image_size, crop_size=image_size).save_pretrained(folder)
    return folder


def write_ip_adapter(
    path: Path,
    plus: bool = False,
    encoder_width: int | None = None,
    cross_attention: int = TINY_CROSS,
    layers: tuple[int, ...] = TINY_LAYERS,
    tokens: int | None = None,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> Path:
    """An IP-Adapter .safetensors at `path` in h94's layout (module docstring).

    `encoder_width`: what it projects, the encoder's `projection_dim` (plain; default TINY_VIT_H's 24)
    or its `hidden_size` (Plus; default 32). `layers`: the hidden width of each cross-attention of the
    UNet. `tokens`: image tokens (4 for plain, 16 for Plus, as h94's)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if plus:
            width = encoder_width or TINY_VIT_H["hidden_size"]
            state = _resampler(width, cross_attention, tokens or 16)
        else:
            width = encoder_width or TINY_VIT_H["projection_dim"]
            state = _projection(width, cross_attention, tokens or 4)
        for index, hidden in enumerate(layers):
            for name in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{2 * index + 1}.{name}.weight"] = _linear(hidden, cross_attention)
    return _save(state, path, dtype)


def write_h94(root: Path, seed: int = 0) -> dict[str, Path]:
    """h94/IP-Adapter's SDXL layout under `root` (`H94_FILES`): the two encoder folders and the three
    adapter files; name (the file's stem) → path. The encoders are `write_image_encoder`'s with the
    widths of TINY_VIT_H and TINY_VIT_BIGG."""
    root = Path(root)
    encoders = {folder: widths for _, folder, widths in H94_FILES.values()}
    for number, (folder, widths) in enumerate(sorted(encoders.items())):
        if not (root / folder / "config.json").exists():
            write_image_encoder(root / folder, seed=seed + number, **widths)
    written = {}
    for number, (name, (plus, _, widths)) in enumerate(H94_FILES.items()):
        width = widths["hidden_size"] if plus else widths["projection_dim"]
        path = write_ip_adapter(root / name, plus=plus, encoder_width=width, seed=seed + 10 + number)
        written[path.stem] = path
    return written


def write_not_an_ip_adapter(path: Path) -> Path:
    """A .safetensors of LoRA-like keys: no `image_proj`, no `ip_adapter`."""
    state = {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}
    return _save(state, path, torch.float16)


def _projection(width: int, cross: int, tokens: int) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter's `ImageProjection`: image_embeds → `tokens` tokens of `cross`."""
    return {
        "image_proj.proj.weight": _linear(tokens * cross, width),
        "image_proj.proj.bias": _bias(tokens * cross),
        "image_proj.norm.weight": _norm(cross),
        "image_proj.norm.bias": _bias(cross),
    }


def _resampler(width: int, cross: int, tokens: int) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus's Resampler (IP-Adapter's `resampler.py`, as h94 saved it): `tokens` learnt
    queries attend to the encoder's hidden states through four perceiver layers."""
    hidden = _PLUS_HEAD  # one head: the least diffusers reads (to_q's rows ÷ 64)
    inner, ff = _PLUS_HEAD, 4 * hidden
    state = {
        "image_proj.latents": torch.randn(1, tokens, hidden) / hidden**0.5,
        "image_proj.proj_in.weight": _linear(hidden, width),
        "image_proj.proj_in.bias": _bias(hidden),
        "image_proj.proj_out.weight": _linear(cross, hidden),
        "image_proj.proj_out.bias": _bias(cross),
        "image_proj.norm_out.weight": _norm(cross),
        "image_proj.norm_out.bias": _bias(cross),
    }
    for i in range(_PLUS_DEPTH):
        layer = f"image_proj.layers.{i}"
        state |= {
            f"{layer}.0.norm1.weight": _norm(hidden),
            f"{layer}.0.norm1.bias": _bias(hidden),
            f"{layer}.0.norm2.weight": _norm(hidden),
            f"{layer}.0.norm2.bias": _bias(hidden),
            f"{layer}.0.to_q.weight": _linear(inner, hidden),
            f"{layer}.0.to_kv.weight": _linear(2 * inner, hidden),
            f"{layer}.0.to_out.weight": _linear(hidden, inner),
            f"{layer}.1.0.weight": _norm(hidden),
            f"{layer}.1.0.bias": _bias(hidden),
            f"{layer}.1.1.weight": _linear(ff, hidden),
            f"{layer}.1.3.weight": _linear(hidden, ff),
        }
    return state


def _linear(out_features: int, in_features: int) -> torch.Tensor:
    return torch.randn(out_features, in_features) / in_features**0.5


def _bias(size: int) -> torch.Tensor:
    return torch.randn(size) * 0.02


def _norm(size: int) -> torch.Tensor:
    return 1.0 + torch.randn(size) * 0.1


def _save(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {"format": "pt"}
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path

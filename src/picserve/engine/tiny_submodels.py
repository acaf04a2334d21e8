"""Random LoRAs, embeddings and hypernetworks for the tiny SDXL, in the formats users download.

For tests and benchmarks: each file is built in well under a second and exercises the real loading
path (kohya and diffusers/PEFT LoRA keys, SDXL `clip_l`/`clip_g` embeddings, A1111 hypernetwork `.pt`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from picserve.engine import checkpoint, tiny

__all__ = [
    "write_broken_embedding",
    "write_broken_hypernetwork",
    "write_broken_lora",
    "write_embedding",
    "write_hypernetwork",
    "write_lora_kohya",
    "write_lora_peft",
    "write_lora_sd1",
]

_ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")
_TEXT = (".q_proj", ".k_proj", ".v_proj", ".out_proj")


@functools.lru_cache(maxsize=1)
def _pipe() -> Any:
    """A tiny pipeline to read module names and widths from (never modified)."""
    return tiny.build_pipeline()


def _linears(module: Any, suffixes: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(name, nn.Linear) of the module's linears whose names end with one of `suffixes`."""
    return [(n, m) for n, m in module.named_modules() if n.endswith(suffixes) and isinstance(m, torch.nn.Linear)]


def write_lora_kohya(
    folder: Path, code: str, seed: int = 0, rank: int = 4, metadata: dict[str, str] | None = None
) -> Path:
    """kohya/sd-scripts naming: lora_unet_<SGM path>, lora_te1_…, lora_te2_…, with lora_down/lora_up/alpha."""
    pipe, generator = _pipe(), torch.Generator().manual_seed(seed)
    prefixes = checkpoint._unet_prefixes(dict(pipe.unet.config))
    state: dict[str, torch.Tensor] = {}

    def add(key: str, linear: Any) -> None:
        state[f"{key}.lora_down.weight"] = torch.randn(rank, linear.in_features, generator=generator) * 0.3
        state[f"{key}.lora_up.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.3
        state[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, linear in _linears(pipe.unet, _ATTENTION):
        sgm, _ = checkpoint._rename(name + ".weight", prefixes)
        add("lora_unet_" + sgm.removesuffix(".weight").replace(".", "_"), linear)
    for tag, encoder in (("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)):
        for name, linear in _linears(encoder, _TEXT):
            name = name if name.startswith("text_model.") else "text_model." + name
            add(f"lora_{tag}_" + name.replace(".", "_"), linear)
    path = Path(folder) / f"{code}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def write_lora_peft(folder: Path, code: str, seed: int = 0, rank: int = 4) -> Path:
    """diffusers/PEFT naming, made the way diffusers' training scripts save it."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = tiny.build_pipeline()  # its own copy: adapters are added to it
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.add_adapter(
            LoraConfig(
                r=rank,
                lora_alpha=rank,
                init_lora_weights="gaussian",
                target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
            )
        )
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
    StableDiffusionXLPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        text_encoder_2_lora_layers=get_peft_model_state_dict(pipe.text_encoder_2),
        weight_name=f"{code}.safetensors",
    )
    return Path(folder) / f"{code}.safetensors"


def write_lora_sd1(folder: Path, code: str, rank: int = 4) -> Path:
    """A LoRA shaped for SD 1.5 (cross-attention 768, one text encoder): never fits an SDXL model."""
    state: dict[str, torch.Tensor] = {}
    for key, (out_f, in_f) in {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (320, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }.items():
        state[f"{key}.lora_down.weight"] = torch.randn(rank, in_f)
        state[f"{key}.lora_up.weight"] = torch.randn(out_f, rank)
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    path = Path(folder) / f"{code}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_embedding(folder: Path, code: str, vectors: int = 2, seed: int = 0) -> Path:
    """An SDXL textual inversion: `clip_l` and `clip_g` rows for the two text encoders."""
    generator = torch.Generator().manual_seed(seed)
    pipe = _pipe()
    path = Path(folder) / f"{code}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "clip_l": torch.randn(vectors, pipe.text_encoder.config.hidden_size, generator=generator),
            "clip_g": torch.randn(vectors, pipe.text_encoder_2.config.hidden_size, generator=generator),
        },
        str(path),
    )
    return path


def write_broken_embedding(folder: Path, code: str, vectors: int = 2, seed: int = 0, clip_g: bool = True) -> Path:
    """An SDXL embedding whose `clip_l` part is valid but whose `clip_g` part cannot load: rows 8 wider than
    the second text encoder's (or, with `clip_g=False`, no `clip_g` at all)."""
    generator = torch.Generator().manual_seed(seed)
    pipe = _pipe()
    state = {"clip_l": torch.randn(vectors, pipe.text_encoder.config.hidden_size, generator=generator)}
    if clip_g:
        state["clip_g"] = torch.randn(vectors, pipe.text_encoder_2.config.hidden_size + 8, generator=generator)
    path = Path(folder) / f"{code}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_broken_lora(folder: Path, code: str, seed: int = 0, rank: int = 4) -> Path:
    """A kohya LoRA whose UNet and te1 keys are valid but whose first te2 `lora_down` is 8 columns too wide:
    it fails only after the earlier parts have loaded."""
    from safetensors.torch import load_file

    path = write_lora_kohya(folder, code, seed=seed, rank=rank)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.startswith("lora_te2_") and k.endswith(".lora_down.weight"))
    down = state[key]
    state[key] = torch.cat([down, torch.zeros(down.shape[0], 8)], dim=1)
    save_file(state, str(path))
    return path


def write_hypernetwork(folder: Path, code: str, seed: int = 0, context_dim: int | None = None) -> Path:
    """An A1111 hypernetwork `.pt`: per context width, two MLPs (keys, values), layer structure 1-2-1."""
    generator = torch.Generator().manual_seed(seed)
    width = context_dim or _pipe().unet.config.cross_attention_dim

    def mlp() -> OrderedDict[str, torch.Tensor]:
        # index 1 is the activation, as in A1111's nn.Sequential, so the linears are 0 and 2
        return OrderedDict(
            {
                "linear.0.weight": torch.randn(2 * width, width, generator=generator) * 0.2,
                "linear.0.bias": torch.zeros(2 * width),
                "linear.2.weight": torch.randn(width, 2 * width, generator=generator) * 0.2,
                "linear.2.bias": torch.zeros(width),
            }
        )

    data = {
        width: [mlp(), mlp()],
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "is_layer_norm": False,
        "use_dropout": False,
        "activate_output": False,
        "last_layer_dropout": False,
        "name": code,
        "step": 1000,
    }
    path = Path(folder) / f"{code}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_broken_hypernetwork(folder: Path, code: str, seed: int = 0) -> Path:
    """An A1111 hypernetwork of the UNet's context width whose keys MLP does not chain: its second linear
    takes 8 more inputs than the first gives. It loads, and fails on its first context."""
    path = write_hypernetwork(folder, code, seed=seed)
    data = torch.load(path, map_location="cpu", weights_only=True)
    width = next(key for key in data if isinstance(key, int))
    keys_mlp = data[width][0]
    keys_mlp["linear.2.weight"] = torch.zeros(width, keys_mlp["linear.2.weight"].shape[1] + 8)
    torch.save(data, path)
    return path

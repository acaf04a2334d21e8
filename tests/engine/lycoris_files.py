"""LyCORIS files written by the `lycoris-lora` package (an independent writer), and its own merge.

`write(variant, folder, code)` builds a LyCORIS network on a fresh tiny SDXL with lycoris' kohya entry
point (`create_network`, the one sd-scripts trains with), gives every parameter random values (a
trained file's, instead of the zero init), saves it with lycoris' `save_weights`, and returns the
weights that lycoris' own computation gives each changed layer at a weight (`_forward_delta`), by the
layer's module name in the pipeline, so that a test can build the merged model without picserve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from picserve.engine import tiny

#: variant → lycoris create_network arguments
VARIANTS: dict[str, dict[str, Any]] = {
    "locon": {"algo": "lora"},
    "locon-tucker": {"algo": "lora", "use_tucker": True},
    "loha": {"algo": "loha"},
    "loha-tucker": {"algo": "loha", "use_tucker": True},
    "lokr": {"algo": "lokr", "factor": 4},
    "lokr-full-matrix": {"algo": "lokr", "full_matrix": True},
    "full": {"algo": "full"},
    "dora": {"algo": "lora", "dora_wd": True},
    "doha": {"algo": "loha", "dora_wd": True},
    "dokr": {"algo": "lokr", "dora_wd": True, "factor": 4},
    "dora-in": {"algo": "lora", "dora_wd": True, "wd_on_output": False},
}

#: every layer type of the SDXL UNet and text encoders: attention, resnets (3×3 convs), samplers, conv_in/out
_PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""

#: (module name as "unet.x.y" / "text_encoder.x" / "text_encoder_2.x") → merged weight (and bias)
Merged = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def write(variant: str, folder: Path, code: str, seed: int = 0) -> tuple[Path, Callable[[float], Merged]]:
    """The file `folder/code.safetensors`, and `merged(weight)`: lycoris' merge of it, layer by layer."""
    from lycoris.kohya import create_network

    preset = folder / "lycoris-preset.toml"
    folder.mkdir(parents=True, exist_ok=True)
    preset.write_text(_PRESET)
    pipe = tiny.build_pipeline()
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    network = create_network(
        1.0, 4, 2.0, None, encoders, pipe.unet, preset=str(preset), conv_dim=4, conv_alpha=2.0, **VARIANTS[variant]
    )
    network.apply_to(encoders, pipe.unet, True, True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    path = folder / f"{code}.safetensors"
    network.save_weights(str(path), torch.float32, {})
    names = {
        id(module): f"{part}.{name}"
        for part, component in (
            ("unet", pipe.unet),
            ("text_encoder", pipe.text_encoder),
            ("text_encoder_2", pipe.text_encoder_2),
        )
        for name, module in component.named_modules()
    }

    @torch.no_grad()
    def merged(weight: float) -> Merged:
        out: Merged = {}
        for lora in network.loras:
            base = lora.org_weight.detach().float()
            change, bias_change = _forward_delta(lora, base.shape)
            if getattr(lora, "wd", False):  # DoRA: picserve (as A1111, ComfyUI) moves linearly base → merge at 1
                full = lora.apply_weight_decompose(base + change, 1.0)
                value = base + weight * (full - base)
            else:
                value = base + weight * change
            bias = None
            if bias_change is not None:
                bias = lora._org_bias_tensor(torch.device("cpu"), torch.float32) + weight * bias_change
            out[names[id(lora.org_module[0])]] = (
                value.detach().clone(),
                None if bias is None else bias.detach().clone(),
            )
        return out

    return path, merged


def _forward_delta(lora: Any, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW (and Δbias) at weight 1 as the module's own forward computes it — the network as trained.

    LoHa and LoKr: `get_weight(shape) × scalar`, what their forward adds. (lycoris 4.1.3's merge,
    `get_diff_weight`, multiplies that by alpha/rank a second time, so its merged model differs from
    the network it trained; every other algorithm's merge and forward agree.)
    """
    if type(lora).__name__ in ("LohaModule", "LokrModule"):
        return (lora.get_weight(shape) * lora.scalar).float(), None
    change, bias = lora.get_diff_weight(multiplier=1, shape=shape, device="cpu")
    return change.float(), None if bias is None else bias.float()


def write_peft_dora(folder: Path, code: str, seed: int = 0) -> tuple[Path, Callable[[float], Merged]]:
    """A DoRA in the diffusers/PEFT layout (`lora_A`, `lora_B`, `lora_magnitude_vector`), written by peft
    and diffusers' `save_lora_weights`; `merged(weight)`: peft's own merge at that weight, by module name."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    pipe = tiny.build_pipeline()
    targets = {
        "unet": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
        "text_encoder_2": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
    }
    generator = torch.Generator().manual_seed(seed)
    for part, modules in targets.items():
        getattr(pipe, part).add_adapter(LoraConfig(r=4, lora_alpha=2, use_dora=True, target_modules=modules))
    with torch.no_grad():
        for part in targets:
            for name, parameter in getattr(pipe, part).named_parameters():
                if "lora_" in name:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        text_encoder_2_lora_layers=get_peft_model_state_dict(pipe.text_encoder_2),
        weight_name=f"{code}.safetensors",
        **{f"{part}_lora_adapter_metadata": getattr(pipe, part).peft_config["default"].to_dict() for part in targets},
    )

    @torch.no_grad()
    def merged(weight: float) -> Merged:
        """peft's merge at 1, then (as for every DoRA in picserve, and in A1111 and ComfyUI) linear from
        the base at `weight` (peft's own merge at w ≠ 1 scales ΔW inside the norm instead)."""
        out: Merged = {}
        for part in targets:
            for name, module in getattr(pipe, part).named_modules():
                if isinstance(module, BaseTunerLayer) and not module.merged:
                    (adapter,) = module.active_adapters
                    base = module.get_base_layer()
                    original = base.weight.detach().clone()
                    module.merge(adapter_names=[adapter])
                    out[f"{part}.{name}"] = (original + weight * (base.weight.detach() - original), None)
                    module.unmerge()
                    base.weight.copy_(original)
        return out

    return folder / f"{code}.safetensors", merged

"""Header-only `.safetensors` files: the tensor shapes picserve inspects, with no weights behind them.

Enough for the catalog and every submit-time check (base model, widths, trigger words), so the fast
tier lists and validates models without torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

__all__ = [
    "SD1_EMBEDDING",
    "SD1_LORA",
    "SD1_LORA_TEXT_ONLY",
    "SDXL_LORA",
    "SDXL_LORA_UNET_ONLY",
    "SDXL_MAIN",
    "sdxl_main",
    "write_header",
]

SDXL_MAIN = {
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
}
SDXL_LORA = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
}
SD1_LORA = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}
#: kohya SD1 naming (`lora_te_`, one text encoder): its width is SDXL's first encoder's, its second is missing
SD1_LORA_TEXT_ONLY = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}
#: an SDXL LoRA trained on the UNet only: no text-encoder keys, which is fine
SDXL_LORA_UNET_ONLY = {k: v for k, v in SDXL_LORA.items() if k.startswith("lora_unet_")}
#: an SD1 textual inversion: one set of 768-wide vectors, no clip_g
SD1_EMBEDDING = {"emb_params": (2, 768)}


def sdxl_main(text_layers: int = 12, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """SDXL_MAIN with what the API also reads before queueing: the first text encoder's layers and the
    UNet's input channels (9: an inpainting checkpoint)."""
    layer = "conditioner.embedders.0.transformer.text_model.encoder.layers.{}.self_attn.q_proj.weight"
    return {
        **SDXL_MAIN,
        **{layer.format(i): (768, 768) for i in range(text_layers)},
        "model.diffusion_model.input_blocks.0.0.weight": (320, in_channels, 3, 3),
    }


def write_header(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Path:
    """A `.safetensors` file declaring `shapes` (every tensor empty), with optional `__metadata__`."""
    header: dict[str, object] = {
        name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 0]} for name, shape in shapes.items()
    }
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path

"""Tiny Segment Anything folders, saved as the folders users install in models/segment.

`write_tiny_sam` saves a `SamModel` of SAM's architecture at toy sizes (a 2-layer ViT of width 32 over
a 128² input in 16 px patches: an 8² embedding and 32² low-resolution masks) with random weights, by
`save_pretrained` (config.json, model.safetensors) beside its `SamImageProcessor`'s
preprocessor_config.json: the layout of facebook/sam-vit-base and SlimSAM's folders. A few hundred KB.

Random SAM weights give logits of about 1e-5 (SAM's initialisation is tiny), a mask that is 0.5
everywhere; the last layer of each output's hypernetwork MLP is scaled so that the logits spread over
roughly ±10 (a mask is linear in it), and the masks have soft edges and some opaque and some
transparent area. What the model picks is random: the tests check the rules around it.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_not_sam", "write_tiny_sam", "write_truncated_sam"]


def write_tiny_sam(folder: Path, image_size: int = 128, seed: int = 0, logit_scale: float = 3e5) -> Path:
    """Save the tiny SAM (see the module docstring) in `folder` and return `folder`."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel

    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": 16,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": image_size, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(logit_scale)
            mlp.proj_out.bias.mul_(logit_scale)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    low = image_size // 16 * 4
    SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_pad_size={"height": low, "width": low},
    ).save_pretrained(str(folder))
    return folder


def write_not_sam(folder: Path) -> Path:
    """A transformers folder that is no SAM: a CLIP vision encoder's config.json (no weights needed:
    the config is refused first)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "clip_vision_model", "architectures": ["CLIPVisionModelWithProjection"]})
    )
    return folder


def write_truncated_sam(source: Path, folder: Path) -> Path:
    """A copy of the SAM folder `source` whose weights file is cut to its first 200 bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        data = path.read_bytes()
        (folder / path.name).write_bytes(data[:200] if path.suffix == ".safetensors" else data)
    return folder

"""The public configs of SDXL base 1.0 (no weights), so user checkpoints load with no model hub.

`from_single_file(path, config=folder)` needs a diffusers folder with configs and tokenizer files.
This module writes one from the table below and from OpenAI CLIP's BPE merges (shipped beside it,
MIT licence), whose vocabulary is derived exactly as the Hugging Face CLIP tokenizer files are.
The 9-channel variant is the one SDXL inpainting checkpoints use.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from picserve.engine import bpe

__all__ = ["config_dir"]

_BPE = Path(__file__).with_name("clip_bpe_simple_vocab_16e6.txt.gz")
_CLIP_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the BPE file

_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}
# eos_token_id is the real id (49407): the legacy value 2 makes pooling pick added TI tokens.
_CLIP_COMMON = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "model_type": "clip_text_model",
}
_TEXT_ENCODER = {
    **_CLIP_COMMON,
    "architectures": ["CLIPTextModel"],
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
}
_TEXT_ENCODER_2 = {
    **_CLIP_COMMON,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_TOKENIZER = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "do_lower_case": True,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": True,
}


def _clip_merges() -> list[tuple[str, str]]:
    with gzip.open(_BPE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : _CLIP_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for line in lines:
        first, second = line.split()  # "a b": one merge per line
        merges.append((first, second))
    return merges


def _write(folder: Path, inpaint: bool) -> None:
    files = {
        "model_index.json": _MODEL_INDEX,
        "unet/config.json": {**_UNET, "in_channels": 9 if inpaint else 4},
        "vae/config.json": _VAE,
        "text_encoder/config.json": _TEXT_ENCODER,
        "text_encoder_2/config.json": _TEXT_ENCODER_2,
        "scheduler/scheduler_config.json": _SCHEDULER,
        "tokenizer/tokenizer_config.json": _TOKENIZER,
        "tokenizer_2/tokenizer_config.json": {**_TOKENIZER, "pad_token": "!"},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=1))
    merges = _clip_merges()
    for name in ("tokenizer", "tokenizer_2"):
        bpe.write_tokenizer_files(folder / name, merges)


def config_dir(cache_root: Path, inpaint: bool = False) -> Path:
    """A diffusers config folder for SDXL base (or its 9-channel inpaint UNet), written once."""
    folder = Path(cache_root) / ("sdxl-inpaint-config" if inpaint else "sdxl-base-config")
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sdxl-", dir=folder.parent))
    _write(staging, inpaint)
    try:
        os.rename(staging, folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder

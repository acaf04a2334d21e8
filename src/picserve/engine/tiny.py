"""A randomly initialised SDXL-architecture model, tiny enough to build and run in seconds on a CPU.

It keeps SDXL's topology (three UNet levels with two layers each, a four-level VAE, two CLIP text
encoders of different widths, the second with ten layers), so that single-file loading, kohya LoRA
key mapping, clip skip and inpaint detection follow the same code paths as a real checkpoint. Its
images are noise: tests assert properties (determinism, masks, seams), never pixels.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from picserve.engine import bpe, checkpoint

__all__ = ["TINY_CODE", "TINY_INPAINT_CODE", "build_pipeline", "write_model"]

TINY_CODE = "picserve-tiny"
#: the same model with a 9-channel UNet, as SDXL inpainting checkpoints have
TINY_INPAINT_CODE = "picserve-tiny-inpaint"

# A small prompt corpus: the BPE vocabulary is learnt from it, so common prompt words get tokens.
_CORPUS = """
a photo of a cat sitting on a red sofa, masterpiece, best quality, highly detailed, 8k, sharp focus
a portrait of a woman with a hat, oil painting, dramatic lighting, cinematic, studio light, bokeh
a dog playing in the garden at sunset, golden hour, warm colors, soft light, depth of field
a futuristic city at night, neon lights, rain, cyberpunk style, reflections, wide angle, concept art
a landscape with mountains and a lake, clouds, blue sky, trees, forest, river, snow, winter, autumn
an astronaut riding a horse on the moon, space, stars, planet, galaxy, science fiction, illustration
a bowl of fruit on a wooden table, still life, apples, oranges, grapes, watercolor, pencil sketch
an anime girl with long hair and blue eyes, school uniform, cherry blossoms, smile, looking at viewer
a castle on a hill, fantasy, dragon, knight, medieval, epic, matte painting, trending on artstation
low quality, worst quality, blurry, bad anatomy, bad hands, extra fingers, watermark, text, jpeg artifacts
seamless pattern, texture, tile, fabric, wallpaper, floral, geometric, ornament, marble, wood, stone
a small house by the sea, boat, beach, waves, ocean, lighthouse, morning, fog, photograph, film grain
"""
_MERGES = 486


def _text_configs(vocab_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    common = {
        "vocab_size": vocab_size,
        "max_position_embeddings": 77,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
    }
    # The two encoders need different widths: single-file loading tells CLIP-L from OpenCLIP by it.
    clip_l = dict(
        common,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=4,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    # ten layers: single-file model-type inference looks for `resblocks.9`.
    open_clip = dict(
        common,
        hidden_size=64,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=10,
        hidden_act="gelu",
        projection_dim=32,
    )
    return clip_l, open_clip


def build_pipeline(tokenizer_dir: Path | None = None, seed: int = 0, inpaint: bool = False) -> Any:
    """Build the tiny SDXL pipeline in memory (deterministic for a given torch version and seed).

    The tokenizer files are written to `tokenizer_dir` (kept), or to a temporary folder removed after.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    temporary = tokenizer_dir is None
    folder = Path(tempfile.mkdtemp(prefix="picserve-bpe-")) if tokenizer_dir is None else tokenizer_dir
    try:
        vocab_size = bpe.write_tokenizer_files(folder, bpe.train(_CORPUS, _MERGES))
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
        tokenizer_2 = CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="!"
        )
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)

    clip_l, open_clip = _text_configs(vocab_size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 64),
        layers_per_block=2,
        sample_size=128,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(1, 2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=96,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip_l))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**open_clip))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return pipe


def write_model(
    models_dir: Path, code: str = TINY_CODE, overwrite: bool = False, inpaint: bool = False
) -> tuple[Path, Path]:
    """Write the tiny model twice into `models_dir/main/`: a diffusers folder and a single file.

    The single file gets a sidecar `<code>.json` that points at the diffusers folder for its configs,
    since its widths are not SDXL's.
    """
    main = Path(models_dir) / "main"
    folder, single = main / f"{code}-diffusers", main / f"{code}.safetensors"
    if folder.exists() and single.exists() and not overwrite:
        return folder, single
    main.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(inpaint=inpaint)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=main))
    try:
        pipe.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    checkpoint.export_single_file(pipe, single)
    sidecar = {
        "Name": "picserve tiny SDXL (random weights, for tests)",
        "IsOfficial": False,
        "Config": folder.name,
        "InferenceParams": {"Steps": 6, "CFGScale": 5.0, "Sampler": "Euler", "ClipSkip": 1},
    }
    (main / f"{code}.json").write_text(json.dumps(sidecar, indent=2))
    (main / f"{folder.name}.json").write_text(json.dumps({**sidecar, "Config": None}, indent=2))
    return folder, single

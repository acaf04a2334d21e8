"""Reduced precision without its traps: the modules' dtypes kept, the VAE decode done and checked here.

Users run SDXL in fp16 on GPUs, where three things go wrong that fp32 never shows:

- diffusers upcasts an fp16 SDXL VAE to fp32 for the decode (and for img2img's encode) when its config
  says `force_upcast`, and casts it back only when the call returns: a call that fails in between (out
  of memory in the decode, a cancel) leaves the model's VAE in fp32, and the next request fails with
  "Input type (c10::Half) and bias type (float) should be the same". `dtypes_kept` restores every
  module's dtype on every exit of the block.
- fp16's range is ±65504: a UNet overflowed by a LoRA or a LyCORIS patch at a high weight gives NaN
  latents, and an fp16 VAE without the upcast (or an "fp16-fix" VAE pushed too far) decodes finite
  latents to NaN. NaN turns into a black PNG after the clamp, which would be reported as a success and
  charged. `decode` checks both: NaN/Inf latents are an `errors.NonFiniteImage` at once (decoding them
  again cannot help); a non-finite decode is decoded once more with the VAE in fp32, and if that is not
  finite either, it is a `NonFiniteImage` too. The message names the likely cause and what to change.

The engine asks the pipeline for latents (`output_type="latent"`) and decodes them here, the way
diffusers' SDXL pipelines do it (the upcast rule, the latents' scaling, `image_processor.postprocess`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image

from picserve import errors

__all__ = ["COMPONENTS", "decode", "dtypes_kept", "is_finite", "module_dtypes", "upcasts", "vae_decode"]

log = logging.getLogger(__name__)

#: the modules of an SDXL pipeline that hold weights, and whose dtype is the model's
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def module_dtypes(pipe: Any) -> dict[str, torch.dtype]:
    """The dtype of each weight-holding module of `pipe` (by its first parameter)."""
    found = {}
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None:
            parameter = next(iter(module.parameters()), None)
            if parameter is not None:
                found[name] = parameter.dtype
    return found


@contextlib.contextmanager
def dtypes_kept(pipe: Any) -> Iterator[None]:
    """Every weight-holding module of `pipe` has the dtype it had before the block, however the block
    ended (diffusers' VAE upcast is undone when a decode or encode fails half-way)."""
    before = module_dtypes(pipe)
    try:
        yield
    finally:
        for name, dtype in module_dtypes(pipe).items():
            if dtype != before[name]:
                log.info("restoring the %s of the model to %s (it was left in %s)", name, before[name], dtype)
                getattr(pipe, name).to(dtype=before[name])


def is_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def check_finite(pipe: Any, latents: torch.Tensor, what: str) -> None:
    """NonFiniteImage when the denoised `latents` hold NaN/Inf (`pipe`'s UNet overflowed)."""
    if not is_finite(latents):
        raise errors.NonFiniteImage(
            f"generating {what}, the denoised latents hold NaN or infinite values: the model overflowed in "
            f"{_name(pipe.unet.dtype)} (most often a LoRA or LyCORIS at a high weight, or a checkpoint that "
            "needs more range); lower the LoRA weights or CFG scale, or the operator can run this model with "
            "PICSERVE_DTYPE=bfloat16 or float32. Nothing was charged"
        )


def decode(pipe: Any, latents: torch.Tensor, what: str) -> list[Image.Image]:
    """The images of the denoised `latents`, decoded by `pipe`'s VAE as diffusers' SDXL pipelines do
    (an fp16 VAE whose config asks for it runs in fp32, and is cast back however the decode ends).

    Raises `errors.NonFiniteImage` (nothing else can be done for this request on this model as it is)
    when the latents hold NaN/Inf, or when the decode does even with the VAE in fp32. `what` names the
    request for the message ("4 images of 1024×1024")."""
    check_finite(pipe, latents, what)
    vae = pipe.vae
    upcast = upcasts(vae)
    image = vae_decode(vae, latents, upcast=upcast)
    if not is_finite(image) and not upcast and vae.dtype != torch.float32:
        log.warning("the %s VAE decoded %s to NaN/Inf; decoding again in float32", _name(vae.dtype), what)
        image = vae_decode(vae, latents, upcast=True)
    if not is_finite(image):
        raise errors.NonFiniteImage(
            f"generating {what}, the VAE decoded the latents to NaN or infinite values, even in float32: the "
            "model's VAE is damaged or does not fit it; the operator should check the model's VAE (or name "
            "another in its sidecar). Nothing was charged"
        )
    images: list[Image.Image] = pipe.image_processor.postprocess(image, output_type="pil")
    return images


def upcasts(vae: Any) -> bool:
    """Whether diffusers' SDXL pipelines decode with `vae` in fp32: an fp16 VAE whose config has
    `force_upcast` (SDXL's VAE overflows in fp16; bf16 is not upcast)."""
    return vae.dtype == torch.float16 and bool(vae.config.force_upcast)


def vae_decode(vae: Any, latents: torch.Tensor, upcast: bool) -> torch.Tensor:
    """`vae.decode` of the denoised `latents` (unscaled first), unchecked; with `upcast`, the VAE in fp32
    for it and back in its dtype after, however the decode ends."""
    dtype = vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        weights = next(iter(vae.post_quant_conv.parameters()))
        latents = latents.to(device=weights.device, dtype=weights.dtype)
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image: torch.Tensor = vae.decode(latents, return_dict=False)[0]
        return image
    finally:
        if upcast:
            vae.to(dtype=dtype)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

"""GenerateImagesSDXL: wire params → a fully checked GenerationSpec → a queued task → TaskUID.

Every check happens here, before queueing: once a task is queued it can fail only for runtime
reasons (out of memory, a file that vanished, a cancel), never because its input was bad.
"""

from __future__ import annotations

import secrets
import unicodedata

from picserve import catalog as catalog_module, domain, errors, imaging
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope

__all__ = ["handle", "to_spec"]

_DEFAULTS = {"Steps": 10, "Sampler": "Euler", "ClipSkip": 1, "CFGScale": 7.5}


async def handle(ctx, account: domain.Account, envelope: Envelope, base_url: str) -> dict:
    request = messages.parse(messages.GenerateImagesSDXL, envelope.params)
    spec = to_spec(request, ctx.catalog)
    return {"TaskUID": await ctx.tasks.submit(account, envelope.action, spec)}


def to_spec(request: messages.GenerateImagesSDXL, catalog: catalog_module.Catalog) -> domain.GenerationSpec:
    code = request.MainModel.ModelCode
    entry = catalog.get("main", code)
    if entry is None:
        available = ", ".join(sorted(catalog.entries("main"))) or "none installed"
        raise errors.ModelNotFound(f"MainModel.ModelCode {code!r} is not on this server (available: {available})")
    _refuse_unsupported(request)

    # compat: omitted parameters take the model's own defaults (as ListModels shows them), then PICPIK's.
    given = request.MainModel.InferenceParams
    try:
        own = messages.parse(messages.InferenceParamsModel, entry.inference_params)
    except errors.ParamError as exc:
        raise errors.ModelNotFound(f"model {code!r} has invalid defaults in its sidecar JSON: {exc.message}") from None
    params = {
        name: _first(getattr(given, name, None) if given else None, getattr(own, name), default)
        for name, default in _DEFAULTS.items()
    }
    sampler = domain.canonical_sampler(str(params["Sampler"]))
    if sampler is None:
        raise errors.ParamError(
            f"MainModel.InferenceParams.Sampler: unknown sampler {params['Sampler']!r}; "
            f"valid: {', '.join(domain.SAMPLER_NAMES)}")

    prompt = _join(request.PositivePrompts)
    negative = _join(request.NegativePrompts)
    warnings = []
    if request.TranslatePrompts and (_needs_translation(prompt) or _needs_translation(negative)):
        warnings.append("TranslatePrompts: no translation model is installed for this prompt's language; "
                        "the prompt was used as given")
    seed = secrets.randbelow(2**31) if request.Seed == -1 else request.Seed
    steps = int(params["Steps"])
    images = _reference_images(request, steps)
    return domain.GenerationSpec(
        model_code=code, prompt=prompt, negative_prompt=negative, width=request.Width, height=request.Height,
        batch_size=request.BatchSize, steps=steps, cfg_scale=float(params["CFGScale"]),
        sampler=sampler, clip_skip=int(params["ClipSkip"]), seed=seed, tiling=request.Tiling,
        original_prompt=prompt, warnings=tuple(warnings), **images,
    )


def _reference_images(request: messages.GenerateImagesSDXL, steps: int) -> dict:
    """Image2Image → the image (and mask) it points at, each decoded once here so bad input never queues.

    The mask (white = repaint) is `Image2Image.MaskIndex` when given, else the entry right after the image.
    """
    images = request.ImageAndMaskList or []
    for index, text in enumerate(images):
        imaging.decode(text, f"ImageAndMaskList[{index}]")
    i2i = request.Image2Image
    if i2i is None:
        if images:
            raise errors.ParamError("ImageAndMaskList: images were sent but no Image2Image refers to them")
        return {}
    for name, index in (("ImageIndex", i2i.ImageIndex), ("MaskIndex", i2i.MaskIndex)):
        if index is not None and index >= len(images):
            raise errors.ParamError(f"Image2Image.{name} {index} is out of range: ImageAndMaskList has "
                                    f"{len(images)} entries (indexes 0..{len(images) - 1})")
    if int(steps * i2i.ReferStrength) < 1:
        raise errors.ParamError(
            f"Image2Image.ReferStrength {i2i.ReferStrength:g} × Steps {steps} leaves no denoising step: "
            "their product must be at least 1")
    mask_index = i2i.MaskIndex if i2i.MaskIndex is not None else i2i.ImageIndex + 1
    has_mask = mask_index < len(images) and mask_index != i2i.ImageIndex
    return {
        "init_image": imaging.strip_data_uri(images[i2i.ImageIndex]),
        "mask_image": imaging.strip_data_uri(images[mask_index]) if has_mask else None,
        "strength": i2i.ReferStrength,
        "resize_mode": i2i.ResizeMode,
    }


def _refuse_unsupported(request: messages.GenerateImagesSDXL) -> None:
    """Fields of the spec this server does not run yet: refused by name, never silently ignored."""
    if request.SubModelList:
        raise errors.ParamError("SubModelList: LoRA, embedding and hypernetwork models are not supported "
                                "by this server version yet")


def _first(*values):
    return next(v for v in values if v is not None)


def _join(prompts: list[str] | None) -> str:
    # A1111 takes one prompt string; PICPIK's list parts are joined as comma-separated tags.
    return ", ".join(p.strip() for p in prompts or () if p and p.strip())


def _needs_translation(text: str) -> bool:
    """Whether `text` holds letters outside the Latin script (CJK, Cyrillic, Thai, …)."""
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in text)

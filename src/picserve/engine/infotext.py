"""A generation's A1111 `parameters` text: what A1111, ComfyUI's readers and civitai parse back."""

from __future__ import annotations

from picserve import __version__, domain
from picserve.engine import controlnet, png

__all__ = ["of"]


def _listed(spec: domain.GenerationSpec, kind: str, weighted: bool) -> str | None:
    items = [f"{s.code}:{s.weight:g}" if weighted else s.code for s in spec.sub_models if s.kind == kind]
    return ", ".join(items) or None


def of(spec: domain.GenerationSpec, seed: int) -> str:
    fields: dict[str, object] = {
        "Steps": spec.steps,
        "Sampler": spec.sampler,
        "CFG scale": f"{spec.cfg_scale:g}",
        "Seed": seed,
        "Size": f"{spec.width}x{spec.height}",
        "Model": spec.model_code,
        "Denoising strength": f"{spec.strength:g}" if spec.init_image else None,
        "Mask": "True" if spec.mask_image else None,
        "Clip skip": spec.clip_skip if spec.clip_skip > 1 else None,
        "Tiling": "True" if spec.tiling else None,
        **_hires_fields(spec),
        **_inpaint_fields(spec),
        **controlnet.infotext_fields(spec),
        # A1111's name; its value there is the restorer's, here its ModelCode (and the strength when not 1)
        "Face restoration": _face_fix(spec),
        "LoRA": _listed(spec, "lora", weighted=True),
        "Hypernetwork": _listed(spec, "hypernetwork", weighted=True),
        "Embeddings": _listed(spec, "embedding", weighted=False),
        "Version": f"picserve {__version__}",
    }
    if spec.original_prompt and spec.original_prompt != spec.prompt:
        fields["Original prompt"] = repr(spec.original_prompt)
    if spec.original_negative_prompt and spec.original_negative_prompt != spec.negative_prompt:
        fields["Original negative prompt"] = repr(spec.original_negative_prompt)
    return png.infotext(spec.prompt, spec.negative_prompt, fields)


def _face_fix(spec: domain.GenerationSpec) -> str | None:
    fix = spec.face_fix
    if fix is None:
        return None
    return fix.restorer_code if fix.strength == 1 else f"{fix.restorer_code} ({fix.strength:g})"


def _hires_fields(spec: domain.GenerationSpec) -> dict[str, object]:
    """A1111's hires fix fields (its names: Hires upscale, Hires resize, Hires steps, Hires upscaler)."""
    fix = spec.hires
    if fix is None:
        return {}
    return {
        "Denoising strength": f"{fix.strength:g}",
        "Hires upscale": f"{max(spec.width / fix.width, spec.height / fix.height):.3g}",
        "Hires resize": f"{spec.width}x{spec.height}",
        "Hires steps": fix.steps,
        "Hires upscaler": fix.upscaler,
        "First pass size": f"{fix.width}x{fix.height}",
    }


def _inpaint_fields(spec: domain.GenerationSpec) -> dict[str, object]:
    """A1111's img2img inpainting fields (Mask blur, Inpaint area, Masked area padding), and the margins
    of an outpainting."""
    if spec.mode != "inpaint":
        return {}
    fields: dict[str, object] = {
        "Mask blur": spec.mask_blur or None,
        "Mask mode": "Inpaint not masked" if spec.invert_mask else None,
    }
    if spec.inpaint_area == "masked":
        fields.update({"Inpaint area": "Only masked", "Masked area padding": spec.masked_padding})
    if spec.outpaint != domain.NO_MARGINS:
        fields["Outpaint"] = "left {}, top {}, right {}, bottom {}".format(*spec.outpaint)
    return fields

"""RemoveContents (§6.13), the object eraser: what the mask covers is removed and filled plausibly.

Two ways, chosen at submit:

- an **eraser** from models/inpaint (a LaMa-family model spandrel loads: fast, no prompt): an
  `EraseSpec`, run by engine/erase.py. `EraseModel` (a picserve extension) names one; left out, the
  one whose sidecar says `Default: true`, else the only one installed.
- **SDXL inpainting** when no eraser is installed or the request names a `MainModel` (an extension):
  the request is rewritten as the ModifyMaskedPixels it means (only the masked region, generated at the
  model's resolution, with an empty-scene prompt), so every check and the engine path are the
  generation's. Without a MainModel, an installed SDXL inpainting checkpoint is taken, else the only
  main model.

Either way the mask must have the image's size and mark something; pixels outside the feathered mask
are the input's, bit for bit.
"""

from __future__ import annotations

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import generation, masked_edit

__all__ = [
    "EMPTY_SCENE_NEGATIVE",
    "EMPTY_SCENE_PROMPT",
    "as_masked_edit",
    "check_memory",
    "eraser",
    "from_request",
]

#: the SDXL way's prompts: the area behind the object, nothing in it
EMPTY_SCENE_PROMPT = "empty scene, background only, clean seamless surface, nothing there"
EMPTY_SCENE_NEGATIVE = "person, people, animal, object, text, letters, watermark, logo, frame, border, blurry"


def from_request(request: messages.RemoveContents, services: Services) -> domain.ActionSpec:
    image = reference_images.decode(request.RawImage, "RawImage")
    mask = reference_images.decode(request.Mask, "Mask")
    masked_edit.check_mask(mask, image, "Mask", request.InvertMask)
    catalog = services.catalog
    if request.MainModel is None:
        entry = eraser(request.EraseModel, catalog)
        if entry is not None:
            return domain.EraseSpec(
                width=image.width,
                height=image.height,
                model_code=entry.code,
                invert_mask=request.InvertMask,
                mask_blur=request.MaskBlur,
                image=reference_images.strip_data_uri(request.RawImage),
                mask=reference_images.strip_data_uri(request.Mask),
            )
    elif request.EraseModel is not None:
        raise errors.ParamError(
            "EraseModel and MainModel: name one (EraseModel erases with a model of models/inpaint, MainModel with "
            "an SDXL inpainting pass)"
        )
    return masked_edit.from_request(as_masked_edit(request, catalog), services)


def check_memory(spec: domain.ActionSpec, workers: list[tuple[str, int]], catalog: catalog_module.Catalog) -> None:
    """The SDXL way's memory plan (the generation's); an eraser's run is not planned against the workers."""
    if isinstance(spec, domain.GenerationSpec):
        generation.check_memory(spec, workers, catalog)


def as_masked_edit(request: messages.RemoveContents, catalog: catalog_module.Catalog) -> messages.ModifyMaskedPixels:
    """The ModifyMaskedPixels an SDXL erase means: only the masked region, repainted in full with an
    empty-scene prompt, at the image's size."""
    main = request.MainModel or messages.Model(ModelCode=_inpainting_main(catalog))
    return messages.ModifyMaskedPixels.model_construct(
        MainModel=main,
        SubModelList=None,
        PositivePrompts=[EMPTY_SCENE_PROMPT],
        NegativePrompts=[EMPTY_SCENE_NEGATIVE],
        TranslatePrompts=False,
        Seed=request.Seed,
        Width=None,
        Height=None,
        BatchSize=1,
        UseMainModelVAE=False,
        Masked=messages.MaskModel(
            ImageIndex=0,
            MaskIndex=1,
            InvertMask=request.InvertMask,
            MaskBlur=request.MaskBlur,
            InpaintArea="OnlyMasked",
        ),
        Image2Image=None,
        ImageAndMaskList=[request.RawImage, request.Mask],
        Outpaint=None,
        Webhook=request.Webhook,
    )


def eraser(code: str | None, catalog: catalog_module.Catalog) -> catalog_module.Entry | None:
    """The eraser `code` names (ModelNotFound when it is not installed), or the default of a request naming
    none; None: none is installed (the SDXL way)."""
    if code is None:
        return catalog.default_tool("inpaint", None)
    entry = catalog.get("inpaint", code)
    if entry is None or entry.info.problem:
        installed = ", ".join(sorted(catalog.entries("inpaint"))) or "none"
        why = f"cannot be used: {entry.info.problem}" if entry is not None else "is not on this server"
        raise errors.ModelNotFound(f"EraseModel {code!r} {why} (installed in models/inpaint: {installed})")
    return entry


def _inpainting_main(catalog: catalog_module.Catalog) -> str:
    """The main model an SDXL erase takes when the request names none: an SDXL inpainting checkpoint (the
    first by name), else the only main model; else the refusal says what to install or name."""
    mains = {code: e for code, e in sorted(catalog.entries("main").items()) if e.info.problem is None}
    inpainting = [code for code, e in mains.items() if e.info.unet_in_channels == 9]
    if inpainting:
        return inpainting[0]
    if len(mains) == 1:
        return next(iter(mains))
    raise errors.ModelNotFound(
        "RemoveContents: no eraser is installed (a LaMa model in models/inpaint, docs/models.md) and no SDXL "
        f"inpainting checkpoint; name a MainModel to erase with ({', '.join(mains) or 'none installed'})"
    )

"""ApplyReferenceStyle (§6.7) as a generation: the raw image by img2img, the style image through an
IP-Adapter unit of weight StyleReferStrength. The request is rewritten as the GenerateImagesSDXL params
it means and checked by the generation kind (specs/generation.py), so every check and the engine path
are the generation's; the task keeps its own Action.

The IP-Adapter is `StyleModel` (a picserve extension), else the one whose sidecar says `Default: true`,
else the only one installed; none installed is refused at submit, saying what to install.
"""

from __future__ import annotations

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import check_index, generation

__all__ = ["as_generation", "from_request"]


def from_request(request: messages.ApplyReferenceStyle, services: Services) -> domain.GenerationSpec:
    return generation.from_request(as_generation(request, services.catalog), services)


def as_generation(
    request: messages.ApplyReferenceStyle, catalog: catalog_module.Catalog
) -> messages.GenerateImagesSDXL:
    """The GenerateImagesSDXL params ApplyReferenceStyle means (checked by the generation kind)."""
    images = request.ImageList
    for name in ("RawImageIndex", "StyleImageIndex"):
        check_index(name, getattr(request, name), images, "ImageList")
    style = _style_model(request.StyleModel, catalog)
    width, height = request.Width, request.Height
    if width is None or height is None:  # the raw image's size, to a multiple of 8 within 64..2560
        raw = reference_images.decode(images[request.RawImageIndex], f"ImageList[{request.RawImageIndex}]")
        scale = min(1.0, 2560 / max(raw.size))
        width = width or max(64, round(raw.width * scale / 8) * 8)
        height = height or max(64, round(raw.height * scale / 8) * 8)
    return messages.GenerateImagesSDXL.model_construct(
        **generation.base_fields(request),
        Width=width,
        Height=height,
        BatchSize=request.BatchSize,
        Tiling=False,
        ImageAndMaskList=list(images),
        Image2Image=messages.Image2ImageModel(
            ImageIndex=request.RawImageIndex,
            ReferStrength=request.RawReferStrength,
            # the entry after the raw image is the style image, never a mask: the mask is named as itself
            MaskIndex=None,
        ),
        ControlNetList=[
            messages.ControlNet(
                ImageIndex=request.StyleImageIndex,
                ControlModel=messages.ControlModelModel(
                    ModelCode=style,
                    InferenceParams=messages.InferenceParamsModel(ControlWeight=request.StyleReferStrength),
                ),
            )
        ],
        ReturnControlMaps=False,
        Webhook=request.Webhook,
    )


def _style_model(named: str | None, catalog: catalog_module.Catalog) -> str:
    if named is not None:
        if catalog.get("ipadapter", named) is None:
            available = ", ".join(sorted(catalog.entries("ipadapter"))) or "none installed"
            raise errors.ModelNotFound(
                f"StyleModel {named!r} is not an IP-Adapter on this server (available: {available})"
            )
        return named
    chosen = catalog.default_tool("ipadapter", None)
    if chosen is None:
        installed = sorted(catalog.entries("ipadapter"))
        if installed:
            raise errors.ParamError(
                f"StyleModel: {len(installed)} IP-Adapters are installed ({', '.join(installed)}) and none is the "
                'default: name one, or mark one `"Default": true` in its sidecar'
            )
        raise errors.ModelNotFound(
            "ApplyReferenceStyle needs an IP-Adapter: put an SDXL IP-Adapter (h94/IP-Adapter's sdxl_models/"
            "ip-adapter_sdxl_vit-h.safetensors) in models/ipadapter/ and its image encoder folder (models/"
            "image_encoder) in models/image_encoder/"
        )
    return chosen.code

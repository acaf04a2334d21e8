"""ListModels: the models folder as PICPIK `Model` maps keyed by ModelCode.

Besides PICPIK's fields, picserve extensions that an unchanged PICPIK client ignores: `BaseModel` (what
the tensor shapes say), `StorageDtype` (float16, bfloat16, float8_e4m3fn, … of a .safetensors file), for
main models `Prediction` ("epsilon" or "v"), `ZeroTerminalSNR` and `Vae` (the VAE of models/vae it decodes
with; null: the checkpoint's own), for sub-models and VAEs `CompatibleMainModels`, and `VaeModels`, the
installed VAEs (a VAE is per main model, not named in requests). Three more extension maps list the
models of the image tools: `UpscaleModels` (ResizeImage's `UpscaleModel`: `Architecture` and `Scale`, each
null until known), `BackgroundModels` (RemoveBackground's `BackgroundModel`: `Session`, the rembg family)
and `InpaintModels` (RemoveContents' `EraseModel`: `Architecture`, e.g. LaMa, null until known), then
`FaceModels` (RestoreFaces' `FaceModel`: `Architecture`), `FaceDetectModels` (its `FaceDetectModel`),
`SegmentModels` (ExtractContents' `SegmentModel`) and `CaptionModels` (DescribeImages' `CaptionModel`:
a captioner or a tagger), each with `IsDefault` (what a request naming none gets) and `Problem` for a
file that cannot be used.
"""

from __future__ import annotations

import asyncio
from typing import Any

from picserve import catalog as catalog_module
from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.services import Services

__all__ = ["handle"]

_REPLY_FIELDS = {
    "main": "MainModels",
    "lora": "LoraModels",
    "embedding": "EmbeddingModels",
    "hypernetwork": "HypernetworkModels",
    "vae": "VaeModels",  # picserve extension
    "upscale": "UpscaleModels",  # picserve extension
    "background": "BackgroundModels",  # picserve extension
    "inpaint": "InpaintModels",  # picserve extension
    "faces": "FaceModels",  # picserve extension
    "facedetect": "FaceDetectModels",  # picserve extension
    "segment": "SegmentModels",  # picserve extension
    "caption": "CaptionModels",  # picserve extension
}


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    messages.parse(messages.Empty, envelope.params)  # common fields only: anything else is refused by name
    # A catalog scan reads the header of every new or changed model file: disk work, off the event loop.
    defaults = {
        "upscale": services.settings.default_upscaler,
        "background": services.settings.default_background_model,
    }
    return await asyncio.to_thread(_models, services.catalog, defaults)


def _models(catalog: catalog_module.Catalog, defaults: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The reply's model maps; `defaults`: the settings' default upscaler and background model by kind."""
    defaults = defaults or {}
    reply: dict[str, Any] = {}
    for kind, field in _REPLY_FIELDS.items():
        if kind in catalog_module.TOOL_KINDS:
            default = catalog.default_tool(kind, defaults.get(kind))
            reply[field] = {
                code: _tool(entry, default is not None and default.code == code)
                for code, entry in catalog.entries(kind).items()
            }
        else:
            reply[field] = {code: _model(entry, catalog) for code, entry in catalog.entries(kind).items()}
    return reply


def _tool(entry: catalog_module.Entry, is_default: bool) -> dict[str, Any]:
    """An upscaler, background model or eraser: what it is, and whether requests naming none get it."""
    model: dict[str, Any] = {"Name": entry.name, "ModelCode": entry.code, "IsOfficial": entry.is_official}
    if entry.kind == "upscale":
        model.update(Architecture=entry.architecture, Scale=entry.scale)
    elif entry.kind in ("inpaint", "faces"):
        model["Architecture"] = entry.architecture
    elif entry.kind == "background":
        model["Session"] = entry.session
    model["IsDefault"] = is_default
    if entry.info.problem:
        model["Problem"] = entry.info.problem
    return model


def _model(entry: catalog_module.Entry, catalog: catalog_module.Catalog) -> dict:
    model = {
        "Name": entry.name,
        "ModelCode": entry.code,
        "IsOfficial": entry.is_official,
        "TriggerWordList": list(entry.trigger_words),
        "BaseModel": entry.info.base,
    }  # picserve extension: what the tensor shapes say
    if entry.info.storage_dtype:  # picserve extension: how a .safetensors file stores its weights
        model["StorageDtype"] = entry.info.storage_dtype
    if entry.kind == "main":
        # picserve extensions: how its sampler is configured, and the VAE it decodes with
        model["Prediction"] = entry.prediction
        model["ZeroTerminalSNR"] = entry.zero_terminal_snr
        model["Vae"] = entry.vae
        model["InferenceParams"] = {
            "Steps": 10,
            "Sampler": "Euler",
            "ClipSkip": 1,
            "CFGScale": 7.5,
            **entry.inference_params,
        }
    else:
        # picserve extension: the main models this one fits (an empty list: it fits none here)
        model["CompatibleMainModels"] = catalog.compatible_mains(entry)
        if entry.info.problem:
            model["Problem"] = entry.info.problem
    if entry.kind in ("lora", "hypernetwork"):
        model["InferenceParams"] = {"LoraWeight": 1, **entry.inference_params}
    return model

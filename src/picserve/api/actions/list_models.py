"""ListModels: the models folder as PICPIK `Model` maps keyed by ModelCode."""

from __future__ import annotations

import asyncio
from typing import Any

from picserve import catalog as catalog_module
from picserve import domain
from picserve.api.services import Services
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope

__all__ = ["handle"]

_REPLY_FIELDS = {
    "main": "MainModels",
    "lora": "LoraModels",
    "embedding": "EmbeddingModels",
    "hypernetwork": "HypernetworkModels",
}


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    messages.parse(messages.Empty, envelope.params)  # common fields only: anything else is refused by name
    # A catalog scan reads the header of every new or changed model file: disk work, off the event loop.
    return await asyncio.to_thread(_models, services.catalog)


def _models(catalog: catalog_module.Catalog) -> dict[str, Any]:
    return {
        field: {code: _model(entry, catalog) for code, entry in catalog.entries(kind).items()}
        for kind, field in _REPLY_FIELDS.items()
    }


def _model(entry: catalog_module.Entry, catalog: catalog_module.Catalog) -> dict:
    model = {
        "Name": entry.name,
        "ModelCode": entry.code,
        "IsOfficial": entry.is_official,
        "TriggerWordList": list(entry.trigger_words),
        "BaseModel": entry.info.base,
    }  # picserve extension: what the tensor shapes say
    if entry.kind == "main":
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

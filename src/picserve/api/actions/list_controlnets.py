"""ListControlNets (§6.2): the preprocessors this server can run and the control models installed, as
PICPIK's `PreProcessors` and `ControlModels` maps keyed by ModelCode, each with its default
`InferenceParams` (an entry can be copied unchanged into a `ControlNetList` unit).

Listed preprocessors are the usable ones: `none` and the model-free ones always, the others when their
annotator files are in models/preprocessor/. picserve extensions that an unchanged PICPIK client
ignores: on a control model, `Type` (`ControlNet`, `ControlNetUnion`, or `IPAdapter`: its unit's image is a
reference image, as PICPIK lists `ip-adapter_sd15`), `BaseModel`, `CompatibleMainModels`, `PreProcessors`
(the preprocessors it pairs with, its default first), `ControlTypes` (a Union's), `ImageEncoder` and
`IsDefault` (an IP-Adapter's: ApplyReferenceStyle's default), and `Problem` for a file that cannot be
used; on a preprocessor, `ControlType` (what it feeds a Union model) and `ControlModels` (the installed
models it pairs with).
"""

from __future__ import annotations

import asyncio
from typing import Any

from picserve import catalog as catalog_module
from picserve import domain, preprocessors
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope
from picserve.services import Services
from picserve.specs.controlnet import UNION_TYPES

__all__ = ["handle", "listing"]

#: a control model's InferenceParams when its sidecar gives none (PICPIK's example, §6.2)
_CONTROL_DEFAULTS = {
    "ControlWeight": 1,
    "StartingStep": 0,
    "EndingStep": 1,
    "ControlMode": "Balanced",
    "ResizeMode": "ResizeAndFill",
}


async def handle(services: Services, account: domain.Account, envelope: Envelope, base_url: str) -> dict[str, Any]:
    messages.parse(messages.Empty, envelope.params)  # common fields only: anything else is refused by name
    return await asyncio.to_thread(listing, services.catalog)


def listing(catalog: catalog_module.Catalog) -> dict[str, Any]:
    """The reply's two maps (a catalog scan reads new files' headers: call it off the event loop)."""
    usable = preprocessors.available(catalog.models_dir)
    controls = catalog.entries("controlnet")
    pairs = {code: _pairs(entry, usable) for code, entry in controls.items()}
    return {
        "PreProcessors": {
            code: {
                "Name": pre.name,
                "ModelCode": code,
                "InferenceParams": dict(pre.params),
                "ControlType": pre.control_type,
                "ControlModels": [c for c, paired in pairs.items() if code in paired],
            }
            for code, pre in usable.items()
        },
        "ControlModels": {
            **{code: _control_model(entry, catalog, pairs[code]) for code, entry in controls.items()},
            **{code: _control_model(entry, catalog, ["none"]) for code, entry in catalog.entries("ipadapter").items()},
        },
    }


def _pairs(entry: catalog_module.Entry, usable: dict[str, preprocessors.Preprocessor]) -> list[str]:
    """The preprocessors a control model goes with: its own first, then those its file name suggests;
    every one that feeds a control type for a Union; `none` always (a ready-made control map)."""
    if entry.info.control == "union":
        found = [code for code, pre in usable.items() if pre.control_type]
    else:
        name = entry.code.lower()
        found = [
            code for code, pre in usable.items() if code == entry.preprocessor or any(w in name for w in pre.pairs)
        ]
        if entry.preprocessor in found:
            found.remove(entry.preprocessor)
            found.insert(0, entry.preprocessor)
    return [*(c for c in found if c != "none"), "none"]


def _control_model(entry: catalog_module.Entry, catalog: catalog_module.Catalog, pairs: list[str]) -> dict[str, Any]:
    union = entry.info.control == "union"
    model: dict[str, Any] = {
        "Name": entry.name,
        "ModelCode": entry.code,
        "InferenceParams": {**_CONTROL_DEFAULTS, **entry.inference_params},
        "Type": {"union": "ControlNetUnion", "ipadapter": "IPAdapter"}.get(entry.info.control or "", "ControlNet"),
        "BaseModel": entry.info.base,
        "CompatibleMainModels": catalog.compatible_mains(entry),  # none for a file with a problem
        "PreProcessors": pairs,
    }
    if union:
        model["ControlTypes"] = list(UNION_TYPES)
    if entry.kind == "ipadapter":
        model["ImageEncoder"] = entry.image_encoder.name if entry.image_encoder else None
        model["IsDefault"] = entry.is_default
    if entry.info.problem:
        model["Problem"] = entry.info.problem
    return model

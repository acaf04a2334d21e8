"""GenerateImagesSDXL's `ControlNetList` (PICPIK's `ControlNet` units, §4.4) → checked `ControlUnit`s.

A unit's ControlModel is a ControlNet (models/controlnet) or, as in PICPIK's own ListControlNets
("Contents Migrate": `ip-adapter_sd15`), an IP-Adapter (models/ipadapter): then its image is a
reference image whose content and style guide the generation, by ControlWeight over its step range.

Everything a unit can get wrong is refused here, before queueing, with the field named: an index
outside `ImageAndMaskList`, a control model that is not installed or was made for another base model
(an SD1 ControlNet on SDXL), a preprocessor that is unknown or whose model files are missing, a step
range or weight out of range (messages.py), a Union control type the model does not have, and plain
ControlNets mixed with ControlNet-Unions (diffusers runs one kind per generation).
"""

from __future__ import annotations

from typing import Any

from picserve import catalog as catalog_module
from picserve import domain, errors, modelinfo, preprocessors, reference_images
from picserve.protocol import messages
from picserve.specs import check_index

__all__ = ["UNION_TYPES", "units"]

#: a ControlNet-Union's control types, by index (xinsir's controlnet-union-sdxl-1.0 ProMax has all 8)
UNION_TYPES = ("openpose", "depth", "softedge", "canny", "normal", "segment", "tile", "repaint")
#: the unit defaults PICPIK's ListControlNets example shows (§6.2)
_DEFAULTS: dict[str, Any] = {
    "ControlWeight": 1.0,
    "StartingStep": 0.0,
    "EndingStep": 1.0,
    "ControlMode": "Balanced",
    "ResizeMode": "ResizeAndFill",
}


def units(
    request: messages.GenerateImagesSDXL, main: catalog_module.Entry, catalog: catalog_module.Catalog
) -> tuple[tuple[domain.ControlUnit, ...], tuple[str, ...], set[int]]:
    """The request's units, the images they use (base64, decoded once here so bad input never queues),
    and the ImageAndMaskList indexes they use."""
    given = request.ControlNetList or []
    images = request.ImageAndMaskList or []
    used: dict[int, int] = {}  # ImageAndMaskList index → control_images index
    out: list[domain.ControlUnit] = []
    for i, unit in enumerate(given):
        field = f"ControlNetList[{i}]"
        entry = _control_model(f"{field}.ControlModel.ModelCode", unit.ControlModel.ModelCode, main, catalog)
        params = _params(entry, unit.ControlModel.InferenceParams)
        preprocessor, pre_params = _preprocessor(field, unit, entry, catalog)
        image = _image(f"{field}.ImageIndex", unit.ImageIndex, images, used)
        mask = _image(f"{field}.MaskIndex", unit.MaskIndex, images, used) if unit.MaskIndex is not None else None
        if unit.MaskIndex is not None and unit.MaskIndex == unit.ImageIndex:
            raise errors.ParamError(f"{field}.MaskIndex {unit.MaskIndex} is the ImageIndex: the mask is another entry")
        if entry.kind == "ipadapter":
            _check_reference_unit(field, unit, preprocessor)
        start, end = float(params["StartingStep"]), float(params["EndingStep"])
        if start > end:
            raise errors.ParamError(
                f"{field}.ControlModel.InferenceParams.StartingStep {start:g} is after EndingStep {end:g}"
            )
        out.append(
            domain.ControlUnit(
                model_code=entry.code,
                model_type=entry.info.control or "controlnet",
                image_index=image,
                mask_index=mask,
                invert_mask=unit.InvertMask,
                preprocessor=preprocessor,
                preprocessor_params=pre_params,
                weight=float(params["ControlWeight"]),
                start=start,
                end=end,
                control_mode=str(params["ControlMode"]),
                resize_mode=str(params["ResizeMode"]),
                control_type=_control_type(field, entry, params, preprocessor),
            )
        )
    if len({u.model_type for u in out if u.model_type != "ipadapter"}) > 1:
        raise errors.ParamError(
            "ControlNetList: ControlNet-Union models and plain ControlNets cannot be used in one request "
            "(diffusers runs one kind per generation); use a Union model for every unit, or plain ones"
        )
    order = sorted(used, key=used.__getitem__)
    return tuple(out), tuple(reference_images.strip_data_uri(images[i]) for i in order), set(used)


def _control_model(
    field: str, code: str, main: catalog_module.Entry, catalog: catalog_module.Catalog
) -> catalog_module.Entry:
    found = [e for kind in catalog_module.CONTROL_KINDS if (e := catalog.get(kind, code)) is not None]
    if not found:
        available = ", ".join(sorted(c for k in catalog_module.CONTROL_KINDS for c in catalog.entries(k)))
        raise errors.ModelNotFound(
            f"{field} {code!r} is not a ControlNet or IP-Adapter on this server (available: "
            f"{available or 'none installed (models/controlnet/, models/ipadapter/)'}; see ListControlNets)"
        )
    if len(found) > 1:
        raise errors.ParamError(f"{field} {code!r} is ambiguous: it names a ControlNet and an IP-Adapter; rename one")
    entry = found[0]
    if entry.info.problem:
        raise errors.IncompatibleModel(f"{field} {code!r} cannot be used: {entry.info.problem}")
    reason = modelinfo.misfit(main.info, entry.info, "controlnet")  # the cross-attention widths
    if reason is not None:
        raise errors.IncompatibleModel(
            f"{field} {code!r} ({entry.path.name}) is an {entry.info.base} "
            f"{'IP-Adapter' if entry.kind == 'ipadapter' else 'ControlNet'} and does not fit main model "
            f"{main.code!r} ({main.info.base}): {reason}"
        )
    return entry


def _params(entry: catalog_module.Entry, given: messages.InferenceParamsModel | None) -> dict[str, Any]:
    """The unit's ControlModel parameters: the request's, else the model's sidecar defaults, else PICPIK's."""
    out: dict[str, Any] = {}
    for name, default in {**_DEFAULTS, "ControlType": None}.items():
        asked = getattr(given, name, None) if given is not None else None
        out[name] = next((v for v in (asked, entry.inference_params.get(name), default) if v is not None), None)
    return out


def _preprocessor(
    field: str, unit: messages.ControlNet, entry: catalog_module.Entry, catalog: catalog_module.Catalog
) -> tuple[str, dict[str, Any]]:
    """The unit's preprocessor (`none` when the request names none: the image is the control map) and its
    parameters (the request's over the preprocessor's defaults); refused when unknown or not installed."""
    if unit.PreProcessor is None:
        return "none", {}
    code = unit.PreProcessor.ModelCode
    problem = preprocessors.missing(code, catalog.models_dir)
    if problem is not None:
        raise errors.ModelNotFound(f"{field}.PreProcessor.ModelCode {code!r}: {problem}")
    given = unit.PreProcessor.InferenceParams
    pre = preprocessors.PREPROCESSORS[code]
    params = dict(pre.params)
    if given is not None:  # the keys this preprocessor reads (an open map: others are ignored)
        sent = given.model_dump(exclude_none=True)
        params.update({k: v for k, v in sent.items() if k in params or k in pre.extra})
    if (problem := preprocessors.bad_params(code, params)) is not None:
        raise errors.ParamError(f"{field}.PreProcessor.InferenceParams.{problem}")
    low, high = params.get("CannyLowThreshold"), params.get("CannyHighThreshold")
    if low is not None and high is not None and low > high:
        raise errors.ParamError(
            f"{field}.PreProcessor.InferenceParams.CannyLowThreshold {low} is above CannyHighThreshold {high}"
        )
    return code, params


def _check_reference_unit(field: str, unit: messages.ControlNet, preprocessor: str) -> None:
    """An IP-Adapter unit: its image is the reference itself (no preprocessor)."""
    if preprocessor != "none":
        raise errors.ParamError(
            f"{field}.PreProcessor.ModelCode {preprocessor!r}: an IP-Adapter reads the reference image as it is; "
            "leave PreProcessor out (or use none)"
        )


def _control_type(field: str, entry: catalog_module.Entry, params: dict[str, Any], preprocessor: str) -> str | None:
    """A Union unit's control type: the request's `ControlType`, else its preprocessor's."""
    if entry.info.control != "union":
        if params.get("ControlType"):
            raise errors.ParamError(
                f"{field}.ControlModel.InferenceParams.ControlType: {entry.code!r} is not a ControlNet-Union "
                "model; ControlType is for Union models only"
            )
        return None
    wanted = params.get("ControlType")
    if wanted is None and preprocessor != "none":
        wanted = preprocessors.PREPROCESSORS[preprocessor].control_type
    if wanted is None:
        raise errors.ParamError(
            f"{field}.ControlModel.InferenceParams.ControlType: {entry.code!r} is a ControlNet-Union model; "
            f"name the control type ({', '.join(UNION_TYPES)}) or a PreProcessor"
        )
    if wanted not in UNION_TYPES:
        raise errors.ParamError(
            f"{field}.ControlModel.InferenceParams.ControlType: must be one of {', '.join(UNION_TYPES)} "
            f"(got {messages.shown(wanted)})"
        )
    return str(wanted)


def _image(field: str, index: int, images: list[str], used: dict[int, int]) -> int:
    """The control_images index of ImageAndMaskList[index], decoding it once (checked) on first use."""
    check_index(field, index, images)
    if index not in used:
        reference_images.decode(images[index], f"ImageAndMaskList[{index}]")
        used[index] = len(used)
    return used[index]

"""ControlNet on the command line: `picserve generate --controlnet MODEL:IMAGE[:key=value,...]` (parsed
here into ImageAndMaskList entries and ControlNetList units) and `picserve controlnets` (ListControlNets
as two tables). Registered on the root app in picserve/cli/__init__.py.

An IMAGE (and a `mask=`) is an image file (PNG, JPEG or WebP, sent as a data URI) or
`task:<TaskUID>/<index>`, a finished task's result of the same key, as for `picserve upscale`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url, client_call

if TYPE_CHECKING:
    from picserve.sdk.types import ControlNet, PreProcessorParams

__all__ = ["FLAG", "KEYS", "MAX_UNITS", "ControlFlag", "control_request", "controlnets", "parse_controlnet"]

#: the option these errors name
FLAG = "'--controlnet'"
#: units one request may carry (messages.MAX_CONTROL_UNITS)
MAX_UNITS = 3
#: the keys of a --controlnet value → the wire field each sets (ControlModel's or PreProcessor's
#: InferenceParams), or None for the keys that are the unit's own (pre, mask, invert)
KEYS: dict[str, str | None] = {
    "pre": None,
    "weight": "ControlWeight",
    "start": "StartingStep",
    "end": "EndingStep",
    "mode": "ControlMode",
    "resize": "ResizeMode",
    "mask": None,
    "invert": None,
    "low": "CannyLowThreshold",
    "high": "CannyHighThreshold",
    "resolution": "Resolution",
    "type": "ControlType",
}
#: the keys that are the preprocessor's InferenceParams (they need `pre=`)
_PREPROCESSOR_KEYS = ("low", "high", "resolution")
#: `mode=` values: A1111's three by their wire names (any case) or a short word
_MODES = {
    "balanced": "Balanced",
    "promptmoreimportant": "PromptMoreImportant",
    "prompt": "PromptMoreImportant",
    "controlnetmoreimportant": "ControlNetMoreImportant",
    "controlnet": "ControlNetMoreImportant",
}
#: `resize=` values (any case): how the control image is brought to the generation's size
_RESIZE_MODES = ("JustResize", "CropAndResize", "ResizeAndFill")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class ControlFlag:
    """One --controlnet value, parsed: the control model, the image (and mask) as the request carries
    them (a data URI or a `task:` reference), and the unit's options by their `control_unit` names."""

    model: str
    image: str
    mask: str | None
    preprocessor: str | None
    #: `control_unit`'s keyword arguments (weight, start, end, mode, resize_mode, control_type, invert_mask)
    options: dict[str, Any]
    #: the preprocessor's InferenceParams (CannyLowThreshold, CannyHighThreshold, Resolution)
    preprocessor_params: PreProcessorParams


def control_request(values: Sequence[str]) -> tuple[list[str], list[ControlNet]]:
    """The --controlnet values → (ImageAndMaskList, ControlNetList): each image and mask one entry (an
    image given twice is sent once), each value one unit. Anything wrong is a usage error naming the flag."""
    from picserve.sdk import control_unit

    if len(values) > MAX_UNITS:
        raise typer.BadParameter(
            f"at most {MAX_UNITS} --controlnet units in one request (got {len(values)})", param_hint=FLAG
        )
    images: list[str] = []

    def index_of(image: str) -> int:
        if image not in images:
            images.append(image)
        return images.index(image)

    units: list[ControlNet] = []
    for value in values:
        flag = parse_controlnet(value)
        image_index = index_of(flag.image)
        mask_index = index_of(flag.mask) if flag.mask is not None else None
        if mask_index == image_index:
            raise typer.BadParameter(f"{value!r}: the mask is the control image itself", param_hint=FLAG)
        units.append(
            control_unit(
                flag.model,
                image_index,
                flag.preprocessor,
                mask_index=mask_index,
                **flag.options,
                **flag.preprocessor_params,
            )
        )
    return images, units


def parse_controlnet(value: str) -> ControlFlag:
    """`MODEL:IMAGE[:key=value,...]` → a ControlFlag (the image and mask files read); a usage error (exit 2)
    naming --controlnet and the value for anything the server would refuse by its form alone."""

    def bad(problem: str) -> typer.BadParameter:
        return typer.BadParameter(f"{value!r}: {problem}", param_hint=FLAG)

    model, _, rest = value.partition(":")
    if not model.strip() or not rest:
        raise bad("expected MODEL:IMAGE[:key=value,...], e.g. xl-canny:pose.png:pre=canny,weight=0.8")
    # a preprocessor's parameter may also be given by its InferenceParams name (A1111's other sliders)
    wire = {name.lower(): name for name in _preprocessor_param_names()}
    image, settings = _split_image(rest, {*KEYS, *wire})
    given: dict[str, str] = {}
    for item in (part.strip() for part in settings.split(",")):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip().lower()
        key = _KEY_OF.get(wire.get(key, ""), wire.get(key, key))  # cannylowthreshold → low, xdogthreshold → XDoG…
        if key not in KEYS and key not in wire.values():
            raise bad(f"unknown key {key!r} (keys: {', '.join(KEYS)}, or a preprocessor's InferenceParams name)")
        if key in given:
            raise bad(f"{key} is given twice")
        if key != "invert" and not (eq and raw.strip()):
            raise bad(f"{key} needs a value: {key}=…")
        given[key] = raw.strip() if eq else "true"
    preprocessor = given.get("pre")
    pre_keys = [key for key in given if key in _PREPROCESSOR_KEYS or key in wire.values()]
    if pre_keys and preprocessor is None:
        raise bad(f"{pre_keys[0]} is a preprocessor's parameter: give pre=… too (e.g. pre=canny)")
    options: dict[str, Any] = {}
    for key, name in (("weight", "weight"), ("start", "start"), ("end", "end")):
        if key in given:
            options[name] = _number(bad, key, given[key], float)
    if "start" in options and "end" in options and options["start"] > options["end"]:
        raise bad(f"start {options['start']:g} is after end {options['end']:g}")
    if "mode" in given:
        mode = _MODES.get(given["mode"].lower().replace("_", "").replace("-", ""))
        if mode is None:
            raise bad(f"mode={given['mode']}: must be Balanced, PromptMoreImportant or ControlNetMoreImportant")
        options["mode"] = mode
    if "resize" in given:
        resize = {name.lower(): name for name in _RESIZE_MODES}.get(given["resize"].lower())
        if resize is None:
            raise bad(f"resize={given['resize']}: must be {', '.join(_RESIZE_MODES[:-1])} or {_RESIZE_MODES[-1]}")
        options["resize_mode"] = resize
    if "type" in given:
        from picserve.sdk.types import ControlTypeName

        kinds = get_args(ControlTypeName)
        if given["type"].lower() not in kinds:
            raise bad(f"type={given['type']}: a ControlNet-Union's type is one of {', '.join(kinds)}")
        options["control_type"] = given["type"].lower()
    if "invert" in given:
        if given["invert"].lower() not in (*_TRUE, *_FALSE):
            raise bad(f"invert={given['invert']}: must be true or false")
        options["invert_mask"] = given["invert"].lower() in _TRUE
        if "mask" not in given:
            raise bad("invert inverts the unit's mask: give mask=… too")
    params = cast("PreProcessorParams", {KEYS.get(key) or key: _number(bad, key, given[key]) for key in pre_keys})
    low, high = params.get("CannyLowThreshold"), params.get("CannyHighThreshold")
    if low is not None and high is not None and low > high:
        raise bad(f"low {low} is above high {high}")
    return ControlFlag(
        model=model.strip(),
        image=_read(bad, image),
        mask=_read(bad, given["mask"]) if "mask" in given else None,
        preprocessor=preprocessor,
        options=options,
        preprocessor_params=params,
    )


def _split_image(rest: str, keys: set[str]) -> tuple[str, str]:
    """`IMAGE[:key=value,...]` → (IMAGE, the settings). IMAGE may hold a colon (`task:UID/0`, a file named
    so) and so may a setting (`mask=task:UID/1`): the settings start at the first colon followed by a known
    key (`keys`, lower case), else at the last colon (so that an unknown key is named as such), unless the
    whole is a file."""
    if rest.startswith("task:"):
        reference, _, settings = rest.removeprefix("task:").partition(":")
        return f"task:{reference}", settings
    if Path(rest).exists():
        return rest, ""
    colons = [i for i, char in enumerate(rest) if char == ":"]
    for i in colons:
        first = rest[i + 1 :].split(",", 1)[0].partition("=")[0].strip().lower()
        if first in keys:
            return rest[:i], rest[i + 1 :]
    return (rest[: colons[-1]], rest[colons[-1] + 1 :]) if colons else (rest, "")


def _read(bad: Any, item: str) -> str:
    """An IMAGE or mask= as the request carries it (tools.read_input), its problem a --controlnet error."""
    from picserve.cli.tools import read_input

    try:
        return read_input(item).value
    except typer.BadParameter as exc:
        raise bad(exc.message) from None


def _number(bad: Any, key: str, raw: str, kind: type | None = None) -> Any:
    """`key=raw` as a number of `kind` (a preprocessor parameter's own) inside the range the server takes."""
    low, high, own = _bounds(KEYS.get(key) or key)
    kind = kind or own
    what = "a whole number" if kind is int else "a number"
    try:
        number = kind(raw)
    except ValueError:
        raise bad(f"{key}={raw}: must be {what} from {low:g} to {high:g}") from None
    if not low <= number <= high:
        raise bad(f"{key}={raw}: must be {what} from {low:g} to {high:g}")
    return number


def _bounds(field: str) -> tuple[float, float, type]:
    """The range the server checks `field` of InferenceParams against (messages.InferenceParamsModel's,
    else the preprocessors' table) and, for a preprocessor's parameter, its kind (int or float)."""
    import annotated_types

    from picserve import preprocessors
    from picserve.protocol import messages

    own = preprocessors.PARAMS.get(field)
    kind = own.kind if own is not None else float
    declared = messages.InferenceParamsModel.model_fields.get(field)
    if declared is None:
        assert own is not None  # every key that reaches here is one of the two
        return own.low, own.high, kind
    low = next(cast(float, m.ge) for m in declared.metadata if isinstance(m, annotated_types.Ge))
    high = next(cast(float, m.le) for m in declared.metadata if isinstance(m, annotated_types.Le))
    return low, high, kind


def _preprocessor_param_names() -> list[str]:
    """Every preprocessor's InferenceParams names (preprocessors.PARAMS: CannyLowThreshold, XDoGThreshold, …)."""
    from picserve import preprocessors

    return list(preprocessors.PARAMS)


def controlnets(
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    as_json: bool = typer.Option(False, "--json", help="the reply's PreProcessors and ControlModels, as JSON"),
):
    """The server's control models and preprocessors (ListControlNets), as two tables.

    CONTROL MODEL: what `--controlnet MODEL:…` names, its kind, the base model it was made for, the
    preprocessors it pairs with (its own first; none: the image is the control map) and its defaults.
    PREPROCESSOR: what `pre=` names (the usable ones), the Union type its map feeds, its defaults.

    Exit codes: 0 listed, 2 refused, 3 unreachable.
    """
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        reply = client_call(client.list_controlnets)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    _table(
        ("CONTROL MODEL", "TYPE", "BASE", "PREPROCESSORS", "DEFAULTS", "MAIN MODELS", "PROBLEM"),
        [
            (
                code,
                str(model.get("Type", "ControlNet")),
                str(model.get("BaseModel", "")),
                ",".join(model.get("PreProcessors", [])),
                _defaults(model.get("InferenceParams", {})),
                ",".join(model.get("CompatibleMainModels", [])),
                str(model.get("Problem", "")),
            )
            for code, model in sorted(reply["ControlModels"].items())
        ],
        "(no control models installed)",
    )
    typer.echo("")
    _table(
        ("PREPROCESSOR", "NAME", "UNION TYPE", "DEFAULTS", "CONTROL MODELS"),
        [
            (
                code,
                str(pre.get("Name", code)),
                str(pre.get("ControlType") or ""),
                _defaults(pre.get("InferenceParams", {})),
                ",".join(pre.get("ControlModels", [])),
            )
            for code, pre in reply["PreProcessors"].items()
        ],
        "(no preprocessors)",
    )


#: a default's name in the DEFAULTS column: the --controlnet key that sets it, else its wire name
_KEY_OF = {name: key for key, name in KEYS.items() if name is not None}


def _defaults(params: Any) -> str:
    """`weight=1 start=0 end=1 mode=Balanced` (the --controlnet keys where there is one)."""
    return " ".join(f"{_KEY_OF.get(name, name)}={_shown(value)}" for name, value in dict(params).items()) or "-"


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], empty: str) -> None:
    """An aligned table with its header (as `picserve tasks list`); a blank cell shows `-`."""
    cells = [tuple(cell or "-" for cell in row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *cells, strict=True)]
    for line in (header, *cells):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if not rows:
        typer.echo(empty, err=True)

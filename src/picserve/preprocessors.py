"""ControlNet preprocessors: what turns an uploaded image into a control map, and what each one needs.

A ControlNet unit's `PreProcessor {ModelCode, InferenceParams}` names one of these codes: PICPIK's own
(ListControlNets, spec §8.3), which are A1111's sd-webui-controlnet module names, plus a few more of
A1111's. Users know the maps from A1111 and ComfyUI, so each is made as A1111 makes it (engine/preprocess.py).

    none                  the image already is the control map
    model-free            canny, scribble_xdog, lineart_standard, recolor_luminance, recolor_intensity,
                          shuffle, tile_resample, invert (OpenCV and numpy)
    annotator files       depth, depth_leres, depth_zoe, lineart, lineart_coarse, lineart_anime,
                          softedge_hed, scribble_hed, softedge_pidinet, normal_bae, openpose, openpose_full,
                          mlsd: controlnet_aux's detectors over the lllyasviel/Annotators files the operator
                          puts in models/preprocessor/ (the names A1111 and ComfyUI users already have)
    a model folder        depth_anything: a transformers depth-estimation folder in models/preprocessor/

An annotator needs only the files its own map uses (lineart: `sk_model.pth`, not the coarse model too;
openpose: the body model, openpose_full also the hand and face ones), fewer than controlnet_aux's
`from_pretrained` asks for. PICPIK's `lineart_anime_denoise` (A1111's manga line extractor) is not here:
controlnet_aux has no such detector. Nothing here ever downloads: a code whose files are missing is
refused (`missing`) with the files to put where.

No torch and no heavy imports: the API server reads this table (ListControlNets, request checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEPTH_FOLDER",
    "DEPTH_MODEL_TYPES",
    "FOLDER",
    "PARAMS",
    "PREPROCESSORS",
    "SOURCE",
    "Param",
    "Preprocessor",
    "available",
    "bad_params",
    "depth_model_folder",
    "missing",
]

#: the folder of models_dir holding the annotator files and depth model folders
FOLDER = "preprocessor"
#: where users get the annotator files (the Hugging Face repository A1111 and ComfyUI download from)
SOURCE = "lllyasviel/Annotators"
#: the `needs` entry that stands for a transformers depth-estimation model folder (not a file name)
DEPTH_FOLDER = "depth-estimation"
#: the transformers model types (config.json `model_type`) a depth folder may hold, preferred first
DEPTH_MODEL_TYPES = ("depth_anything", "dpt", "glpn", "zoedepth")


@dataclass(frozen=True)
class Param:
    """One preprocessor InferenceParams field: its type and range (A1111's slider ranges)."""

    kind: type  # int or float
    low: float
    high: float
    #: what it does, for a catalog or a message
    text: str
    #: a value outside the range that is allowed too, and what it means (Resolution 0: the image's own)
    special: tuple[float, str] | None = None


#: the preprocessors' InferenceParams: PICPIK documents the first three; the others are A1111's sliders
#: under PascalCase names
PARAMS: dict[str, Param] = {
    "Resolution": Param(int, 64, 2048, "the side the map is made at (its shorter side)", (0, "the image's own")),
    "CannyLowThreshold": Param(int, 1, 255, "canny's lower hysteresis threshold"),
    "CannyHighThreshold": Param(int, 1, 255, "canny's upper hysteresis threshold"),
    "XDoGThreshold": Param(int, 1, 64, "the difference of Gaussians a line needs (lower: more lines)"),
    "GammaCorrection": Param(float, 0.1, 2.0, "the gamma applied to the brightness map"),
    "DownSamplingRate": Param(float, 1.0, 8.0, "how many times smaller the tile map is"),
    "RemoveNearPercent": Param(int, 0, 100, "depth below this share of the range is set to the far value"),
    "RemoveBackgroundPercent": Param(int, 0, 100, "depth beyond this share of the range is cut away"),
    "MLSDValueThreshold": Param(float, 0.01, 2.0, "the score a straight line needs"),
    "MLSDDistanceThreshold": Param(float, 0.01, 20.0, "the shortest line kept, in px"),
    "Seed": Param(int, 0, 2**32 - 1, "the random field of the shuffle (absent: a new one each time)"),
}


@dataclass(frozen=True)
class Preprocessor:
    """One preprocessor code and what a catalog says about it."""

    code: str
    #: display name (PICPIK's ListControlNets names where it documents them)
    name: str
    #: file names that must be in models/preprocessor/ (or DEPTH_FOLDER: a depth model folder there);
    #: empty: model-free, always usable
    needs: tuple[str, ...] = ()
    #: the default InferenceParams (a read-only mapping; `dict(p.params)` to change a copy)
    params: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: the ControlNet-Union control type its map feeds (xinsir's union ProMax modes); None: no Union type
    #: takes this map (recolor, shuffle) or any does (`none`)
    control_type: str | None = None
    #: words in control model file names that go with it (a catalog's pairing hint)
    pairs: tuple[str, ...] = ()
    #: InferenceParams it also reads that have no default (shuffle's Seed)
    extra: tuple[str, ...] = ()

    @property
    def model_free(self) -> bool:
        return not self.needs


def _p(
    code: str,
    name: str,
    needs: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
    control_type: str | None = None,
    pairs: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Preprocessor:
    defaults = {"Resolution": 512} if params is None else params
    return Preprocessor(code, name, needs, MappingProxyType(defaults), control_type, pairs, extra)


_HED = ("ControlNetHED.pth",)
_BODY = ("body_pose_model.pth",)
_LINEART_WORDS = ("lineart", "scribble", "canny", "mlsd")

#: every preprocessor by code, in ListControlNets order (model-free first)
PREPROCESSORS: dict[str, Preprocessor] = {
    p.code: p
    for p in (
        _p("none", "None (the image is the control map)", params={}),
        _p(
            "canny",
            "Hard Edge",
            params={"CannyLowThreshold": 100, "CannyHighThreshold": 200, "Resolution": 512},
            control_type="canny",
            pairs=("canny",),
        ),
        _p(
            "scribble_xdog",
            "Scribble (Edge)",
            params={"XDoGThreshold": 32, "Resolution": 512},
            control_type="softedge",
            pairs=("scribble", "sketch"),
        ),
        _p("lineart_standard", "Lineart (Standard)", control_type="canny", pairs=("lineart",)),
        _p("recolor_luminance", "Recolor (Luminance)", params={"GammaCorrection": 1.0}, pairs=("recolor",)),
        _p("recolor_intensity", "Recolor (Intensity)", params={"GammaCorrection": 1.0}, pairs=("recolor",)),
        _p("shuffle", "Shuffle", pairs=("shuffle",), extra=("Seed",)),
        _p("tile_resample", "Tile (Resample)", params={"DownSamplingRate": 1.0}, control_type="tile", pairs=("tile",)),
        _p("invert", "Invert (white background, black lines)", params={}, control_type="canny", pairs=_LINEART_WORDS),
        _p("depth", "Depth (MiDas)", ("dpt_hybrid-midas-501f0c75.pt",), control_type="depth", pairs=("depth",)),
        _p(
            "depth_leres",
            "Depth (LeRes)",
            ("res101.pth",),
            params={"Resolution": 512, "RemoveNearPercent": 0, "RemoveBackgroundPercent": 0},
            control_type="depth",
            pairs=("depth",),
        ),
        _p("depth_zoe", "Depth (ZoE)", ("ZoeD_M12_N.pt",), control_type="depth", pairs=("depth",)),
        _p("depth_anything", "Depth (Depth Anything)", (DEPTH_FOLDER,), control_type="depth", pairs=("depth",)),
        _p("lineart", "Lineart", ("sk_model.pth",), control_type="canny", pairs=("lineart",)),
        _p("lineart_coarse", "Lineart (Coarse)", ("sk_model2.pth",), control_type="canny", pairs=("lineart",)),
        _p("lineart_anime", "Lineart (Anime)", ("netG.pth",), control_type="canny", pairs=("anime",)),
        _p("softedge_hed", "Soft Edge (HED)", _HED, control_type="softedge", pairs=("softedge", "hed", "pidi")),
        _p("scribble_hed", "Scribble (HED)", _HED, control_type="softedge", pairs=("scribble", "sketch")),
        _p(
            "softedge_pidinet",
            "Soft Edge (PiDiNet)",
            ("table5_pidinet.pth",),
            control_type="softedge",
            pairs=("softedge", "hed", "pidi"),
        ),
        _p("normal_bae", "Normal Map (Bae)", ("scannet.pt",), control_type="normal", pairs=("normal",)),
        _p("openpose", "Pose", _BODY, control_type="openpose", pairs=("openpose", "pose")),
        _p(
            "openpose_full",
            "Pose (Full)",
            (*_BODY, "hand_pose_model.pth", "facenet.pth"),
            control_type="openpose",
            pairs=("openpose", "pose"),
        ),
        _p(
            "mlsd",
            "MLSD (Straight Lines)",
            ("mlsd_large_512_fp32.pth",),
            params={"Resolution": 512, "MLSDValueThreshold": 0.1, "MLSDDistanceThreshold": 0.1},
            control_type="canny",
            pairs=("mlsd",),
        ),
    )
}


def depth_model_folder(models_dir: Path) -> Path | None:
    """The depth-estimation model folder `depth_anything` runs: a folder of models/preprocessor/ holding a
    transformers `config.json` of a depth model type and its `preprocessor_config.json`. With several, the
    first by DEPTH_MODEL_TYPES' order, then by name; None when there is none."""
    root = Path(models_dir) / FOLDER
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return None
    found: list[tuple[int, Path]] = []
    for folder in folders:
        if not (folder / "preprocessor_config.json").is_file():
            continue
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
        if model_type in DEPTH_MODEL_TYPES:
            found.append((DEPTH_MODEL_TYPES.index(model_type), folder))
    return min(found)[1] if found else None


def _has(models_dir: Path, need: str) -> bool:
    if need == DEPTH_FOLDER:
        return depth_model_folder(models_dir) is not None
    return (Path(models_dir) / FOLDER / need).is_file()


def available(models_dir: Path) -> dict[str, Preprocessor]:
    """The preprocessors usable with this models folder: the model-free ones always, the others when
    everything they need is in models/preprocessor/ (PREPROCESSORS' order)."""
    return {code: p for code, p in PREPROCESSORS.items() if all(_has(models_dir, n) for n in p.needs)}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def missing(code: str, models_dir: Path) -> str | None:
    """Why `code` cannot be used with this models folder (for a user: the caller names the field), or
    None when it can."""
    preprocessor = PREPROCESSORS.get(code)
    if preprocessor is None:
        return f"no such preprocessor (known: {', '.join(PREPROCESSORS)})"
    absent = [n for n in preprocessor.needs if not _has(models_dir, n)]
    if not absent:
        return None
    if DEPTH_FOLDER in absent:
        return (
            "no depth-estimation model is installed: put a transformers depth model folder (its config.json, "
            f"of model_type {_and(list(DEPTH_MODEL_TYPES)).replace(' and ', ' or ')}, its "
            "preprocessor_config.json and weights; e.g. depth-anything/Depth-Anything-V2-Small-hf) "
            f"in models/{FOLDER}/"
        )
    return f"its model files are not installed: put {_and(absent)} (from {SOURCE}) in models/{FOLDER}/"


def _problem(name: str, value: Any) -> str | None:
    spec = PARAMS[name]
    kind = "an integer" if spec.kind is int else "a number"
    what = f"{spec.low:g} to {spec.high:g}"
    if spec.special is not None:
        what += f" (or {spec.special[0]:g}: {spec.special[1]})"
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, int | float) or (spec.kind is int and not integral):
        return f"{name} must be {kind} from {what}, got {value!r}"
    if not (spec.low <= value <= spec.high) and not (spec.special is not None and value == spec.special[0]):
        return f"{name} must be {kind} from {what}, got {value:g}"
    return None


def bad_params(code: str, params: dict[str, Any]) -> str | None:
    """What is wrong with `params` for preprocessor `code` (the first problem, for a user: the caller
    names the field), or None. Only the fields `code` reads are checked; others are ignored (PICPIK's
    InferenceParams is an open map)."""
    preprocessor = PREPROCESSORS.get(code)
    if preprocessor is None:
        return f"no such preprocessor (known: {', '.join(PREPROCESSORS)})"
    for name in (*preprocessor.params, *preprocessor.extra):
        if name in params and params[name] is not None:
            problem = _problem(name, params[name])
            if problem:
                return problem
    return None

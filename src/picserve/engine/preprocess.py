"""ControlNet preprocessors' engine side: an uploaded image → the control map a ControlNet unit sees.

The codes, their files and default InferenceParams are picserve/preprocessors.py's table; the maps are
made as A1111's sd-webui-controlnet makes them, since that is what users compare against:

- **Resolution** is the side the map is made at: the image is resized so that its shorter side is
  `Resolution` (its aspect kept, sides rounded; INTER_CUBIC up, INTER_AREA down), A1111's
  `resize_image_with_pad` without the pad; 0 keeps the image's own size. The map comes back at that
  size (the caller brings it to the generation size by the unit's resize mode), RGB.
- **Model-free maps** are OpenCV and numpy, A1111's formulas: `canny` is `cv2.Canny` on the resized
  RGB image (white edges on black, three channels); `scribble_xdog` a thresholded difference of
  Gaussians; `lineart_standard` the image's darkness against its blur; `recolor_*` the L of LAB / the V
  of HSV, gamma-corrected (A1111 and ComfyUI convert their RGB image as BGR for LAB: so does this, so
  maps match theirs); `shuffle` controlnet_aux's ContentShuffleDetector's remap, seedable (`Seed`) and
  without importing controlnet_aux; `tile_resample`, `invert` and `recolor_*` work at the image's own
  size (no Resolution), as in A1111.
- **Annotators** are controlnet_aux 0.0.10's detectors built over the operator's files in
  models/preprocessor/ (never a download: a missing file is ModelLoadError with `missing`'s message).
  Each is fed the resized image edge-padded to multiples of 64, told to keep that size, and its map is
  cropped back (A1111's pad and `remove_pad`), so a map keeps the image's aspect exactly; controlnet_aux
  alone would round each side to 64 and stretch it. `depth_anything` is transformers'
  AutoModelForDepthEstimation over a depth folder: its predicted depth, resized bilinearly and min-max
  stretched, near white (metric models, whose depth grows with distance, are inverted).
- **Cache** (`Preprocessors`): a few loaded detectors on one device, least recently used out; one is
  loaded again when its files changed (mtime or size). controlnet_aux (about 3 s to import) and
  transformers are imported on the first annotator, never for the model-free maps. Calls are
  serialised by the object's lock (one map at a time per object), as the engine thread runs one task.

Annotator weights are loaded by controlnet_aux's own code with `torch.load`, whose default in this torch
is `weights_only=True`: a pickle that would run code is refused, as a load error.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from picserve import errors
from picserve import preprocessors as table

__all__ = ["Preprocessors", "control_map", "resized"]

log = logging.getLogger(__name__)

#: detectors kept at once (an annotator is 10 MB (MLSD) to 1.4 GB (ZoeDepth) of weights)
_MAX_LOADED = 2
#: the side multiple the annotators' networks are fed (A1111's pad64)
_PAD = 64
#: the model-free maps (numpy and OpenCV only)
_MODEL_FREE = frozenset(code for code, p in table.PREPROCESSORS.items() if p.model_free)


# -- parameters and sizes ---------------------------------------------------------------------------


def _params(code: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """`code`'s InferenceParams: the given ones over its defaults, checked (ParamError names the first
    bad one), typed as PARAMS says."""
    preprocessor = table.PREPROCESSORS[code]
    wanted = {k: v for k, v in given.items() if v is not None}
    problem = table.bad_params(code, wanted)
    if problem:
        raise errors.ParamError(f"preprocessor {code!r}: {problem}")
    out = dict(preprocessor.params)
    out.update({k: wanted[k] for k in (*preprocessor.params, *preprocessor.extra) if k in wanted})
    return {k: table.PARAMS[k].kind(v) if k in table.PARAMS else v for k, v in out.items()}


def _rgb(image: Image.Image) -> np.ndarray:
    """The image as an RGB uint8 array; transparency composited over white (controlnet_aux's HWC3)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        return (rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def resized(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """`rgb` resized so that its shorter side is `resolution` (A1111: sides rounded, INTER_CUBIC up,
    INTER_AREA down); as it is for resolution 0 or when that changes nothing."""
    height, width = rgb.shape[:2]
    if resolution <= 0:
        return rgb
    k = float(resolution) / float(min(height, width))
    size = (max(1, int(np.round(width * k))), max(1, int(np.round(height * k))))
    if size == (width, height):
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _hwc3(array: np.ndarray) -> np.ndarray:
    """A uint8 map as H×W×3 (grey repeated; alpha dropped)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = array.clip(0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.concatenate([array] * 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(_hwc3(array), "RGB")


# -- the model-free maps ------------------------------------------------------------------------------


def _canny(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.Canny(resized(rgb, p["Resolution"]), p["CannyLowThreshold"], p["CannyHighThreshold"])


def _scribble_xdog(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    image = resized(rgb, p["Resolution"]).astype(np.float32)
    fine = cv2.GaussianBlur(image, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(image, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros(dog.shape, dtype=np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > p["XDoGThreshold"]] = 255
    return out


def _lineart_standard(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    x = resized(rgb, p["Resolution"]).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)


def _recolor(channel: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, dict[str, Any]], np.ndarray]:
    def make(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
        value = channel(rgb).astype(np.float32) / 255.0
        return (value ** p["GammaCorrection"] * 255.0).clip(0, 255).astype(np.uint8)

    return make


def _noise_disk(random: np.random.RandomState, height: int, width: int, f: int) -> np.ndarray:
    """controlnet_aux's `make_noise_disk` (one channel) drawing from `random`."""
    grid = random.uniform(low=0, high=1, size=((height // f) + 2, (width // f) + 2, 1))
    noise: np.ndarray = cv2.resize(grid, (width + 2 * f, height + 2 * f), interpolation=cv2.INTER_CUBIC)
    noise = noise[f : f + height, f : f + width]
    noise -= np.min(noise)
    noise /= max(float(np.max(noise)), 1e-12)
    return noise[:, :, None]


def _shuffle(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """ContentShuffleDetector's map (f = 256) on the resized image; `Seed` fixes its random field."""
    image = resized(rgb, p["Resolution"])
    height, width = image.shape[:2]
    random = np.random.RandomState(p.get("Seed"))
    x = _noise_disk(random, height, width, 256) * float(width - 1)
    y = _noise_disk(random, height, width, 256) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _tile_resample(rgb: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    rate = p["DownSamplingRate"]
    if rate < 1.1:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


_MAPS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "none": lambda rgb, p: rgb,
    "canny": _canny,
    "scribble_xdog": _scribble_xdog,
    "lineart_standard": _lineart_standard,
    # A1111's and ComfyUI's formulas: their RGB array converted as BGR (the L weights R and B swapped)
    "recolor_luminance": _recolor(lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_BGR2LAB)[:, :, 0]),
    "recolor_intensity": _recolor(lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_BGR2HSV)[:, :, 2]),
    "shuffle": _shuffle,
    "tile_resample": _tile_resample,
    "invert": lambda rgb, p: 255 - rgb,
}
assert set(_MAPS) == _MODEL_FREE, "every model-free code has its map"


# -- the annotators -----------------------------------------------------------------------------------


def _aux(name: str) -> Any:
    """A controlnet_aux module, imported when first needed (the package imports all its detectors, about
    3 s, with deprecation warnings from timm that say nothing to an operator)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{name}")


@contextlib.contextmanager
def _quiet(code: str) -> Iterator[None]:
    """Loading without controlnet_aux's prints (normalbae's "Loading base model ()...") and warnings,
    except its own printed warnings, which go to the log: ZoeDepth's "Standard model loading failed,
    trying with strict=False" means a file whose keys do not all match."""
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if "warning" in line.lower():
                log.warning("preprocessor %s: controlnet_aux: %s", code, line.strip()[:500])


def _lineart(path: Path) -> Any:
    lineart = _aux("lineart")
    model = lineart.Generator(3, 1, 3)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()
    return lineart.LineartDetector(model, model)


def _openpose(body: Path, hand: Path | None = None, face: Path | None = None) -> Any:
    pose = _aux("open_pose")
    return pose.OpenposeDetector(
        pose.Body(str(body)), pose.Hand(str(hand)) if hand else None, pose.Face(str(face)) if face else None
    )


def _leres(path: Path) -> Any:
    """LeReS without its pix2pix booster (that is A1111's depth_leres++, not offered): res101.pth only."""
    leres = _aux("leres")
    model = leres.RelDepthModel(backbone="resnext101")
    checkpoint = torch.load(path, map_location="cpu")
    model.load_state_dict(leres.strip_prefix_if_present(checkpoint["depth_model"], "module."), strict=True)
    model.eval()
    return leres.LeresDetector(model, None)


def _pretrained(module: str, cls: str) -> Callable[[Path], Any]:
    """controlnet_aux's own `from_pretrained(folder, filename=…)` (it reads the folder's file only)."""

    def load(path: Path) -> Any:
        return getattr(_aux(module), cls).from_pretrained(str(path.parent), filename=path.name)

    return load


@dataclass(frozen=True)
class _Annotator:
    #: what is loaded: codes that share the same weights share it (softedge_hed and scribble_hed)
    key: str
    load: Callable[..., Any]  # the files of `needs` (paths) → the detector
    #: the detector's call arguments beside the image and sizes, from the InferenceParams
    args: Callable[[dict[str, Any]], dict[str, Any]] = lambda p: {}


_ANNOTATORS: dict[str, _Annotator] = {
    "depth": _Annotator("midas", _pretrained("midas", "MidasDetector")),
    "depth_leres": _Annotator(
        "leres", _leres, lambda p: {"thr_a": p["RemoveNearPercent"], "thr_b": p["RemoveBackgroundPercent"]}
    ),
    "depth_zoe": _Annotator("zoe", _pretrained("zoe", "ZoeDetector")),
    "lineart": _Annotator("lineart", _lineart),
    "lineart_coarse": _Annotator("lineart_coarse", _lineart),
    "lineart_anime": _Annotator("lineart_anime", _pretrained("lineart_anime", "LineartAnimeDetector")),
    "softedge_hed": _Annotator("hed", _pretrained("hed", "HEDdetector"), lambda p: {"scribble": False}),
    "scribble_hed": _Annotator("hed", _pretrained("hed", "HEDdetector"), lambda p: {"scribble": True}),
    "softedge_pidinet": _Annotator(
        "pidinet", _pretrained("pidi", "PidiNetDetector"), lambda p: {"scribble": False, "safe": False}
    ),
    "normal_bae": _Annotator("normal_bae", _pretrained("normalbae", "NormalBaeDetector")),
    "openpose": _Annotator(
        "openpose", _openpose, lambda p: {"include_body": True, "include_hand": False, "include_face": False}
    ),
    "openpose_full": _Annotator(
        "openpose_full", _openpose, lambda p: {"include_body": True, "include_hand": True, "include_face": True}
    ),
    "mlsd": _Annotator(
        "mlsd",
        _pretrained("mlsd", "MLSDdetector"),
        lambda p: {"thr_v": p["MLSDValueThreshold"], "thr_d": p["MLSDDistanceThreshold"]},
    ),
}


def _move(detector: Any, device: torch.device) -> Any:
    """The detector's networks on `device` (openpose without hands or face has nothing to move there)."""
    if isinstance(detector, _DepthModel):
        detector.model.to(device)
    elif hasattr(detector, "body_estimation"):
        for part in (detector.body_estimation, detector.hand_estimation, detector.face_estimation):
            if part is not None:
                part.to(device)
    else:
        detector.to(device)
    return detector


def _padded(rgb: np.ndarray) -> np.ndarray:
    """`rgb` edge-padded on the right and bottom to multiples of 64 (A1111's pad64)."""
    height, width = rgb.shape[:2]
    return np.pad(rgb, [[0, -height % _PAD], [0, -width % _PAD], [0, 0]], mode="edge")


def _annotate(detector: Any, rgb: np.ndarray, args: dict[str, Any]) -> np.ndarray:
    """The detector's map of `rgb` at `rgb`'s size: fed padded to multiples of 64 at that very size
    (controlnet_aux's own resize is then the identity), cropped back."""
    height, width = rgb.shape[:2]
    padded = _padded(rgb)
    side = min(padded.shape[:2])
    with torch.inference_mode():
        out = detector(padded, detect_resolution=side, image_resolution=side, output_type="np", **args)
    out = _hwc3(np.asarray(out))
    if out.shape[:2] != padded.shape[:2]:  # a detector that sized it otherwise: bring it back first
        out = cv2.resize(out, (padded.shape[1], padded.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out[:height, :width]


@dataclass
class _DepthModel:
    """A transformers depth-estimation model and its image processor (`depth_anything`)."""

    processor: Any
    model: Any
    #: metric depth (grows with distance): inverted so that near is white, as relative models give it
    metric: bool

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        device = next(self.model.parameters()).device
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=device, dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            depth = self.model(pixel_values=pixels).predicted_depth
            depth = torch.nn.functional.interpolate(
                depth.reshape(1, 1, *depth.shape[-2:]).float(),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            low, high = depth.min(), depth.max()
            depth = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
            if self.metric:
                depth = 1.0 - depth
            out = (depth * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return out


def _depth_model(folder: Path) -> _DepthModel:
    transformers = importlib.import_module("transformers")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    metric = config.get("model_type") in ("glpn", "zoedepth") or config.get("depth_estimation_type") == "metric"
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
    return _DepthModel(processor, model.eval(), metric)


# -- the cache ------------------------------------------------------------------------------------


@dataclass
class _Held:
    detector: Any
    #: the files it was loaded from, each (path, mtime_ns, size)
    version: tuple[tuple[str, int, int], ...]


class Preprocessors:
    """The control maps of one models folder on one device, with a few annotators loaded at once.

    `control_map` makes a map; `get` loads (or returns) a code's detector; `clear` drops them all.
    """

    def __init__(self, models_dir: Path, device: torch.device | str = "cpu", max_loaded: int = _MAX_LOADED) -> None:
        self.models_dir = Path(models_dir)
        self.device = torch.device(device)
        self.max_loaded = max(1, max_loaded)
        self._held: collections.OrderedDict[str, _Held] = collections.OrderedDict()
        self._lock = threading.RLock()

    def loaded(self) -> list[str]:
        """The detectors held (their keys: `hed` serves softedge_hed and scribble_hed), least recently
        used first."""
        with self._lock:
            return list(self._held)

    def clear(self) -> None:
        """Drop every loaded detector (and the device's cached blocks they held)."""
        with self._lock:
            self._held.clear()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def control_map(self, code: str, image: Image.Image, params: Mapping[str, Any]) -> Image.Image:
        """`code`'s control map of `image` (see the module docstring for its size), RGB.

        ModelLoadError when `code` is unknown or its files are missing or cannot be loaded; ParamError
        for an InferenceParams value out of its range (the request checks should have caught it)."""
        problem = table.missing(code, self.models_dir)
        if problem is not None:
            raise errors.ModelLoadError(f"preprocessor {code!r}: {problem}")
        p = _params(code, params)
        rgb = _rgb(image)
        if code in _MODEL_FREE:
            return _image(_MAPS[code](rgb, p))
        with self._lock:
            detector = self.get(code)
            small = resized(rgb, p["Resolution"])
            try:
                if isinstance(detector, _DepthModel):
                    return _image(detector(small))
                return _image(_annotate(detector, small, _ANNOTATORS[code].args(p)))
            except torch.OutOfMemoryError as exc:
                raise errors.OutOfMemory(f"preprocessor {code!r} ran out of device memory") from exc

    def get(self, code: str) -> Any:
        """`code`'s loaded detector (an annotator's controlnet_aux detector, or depth_anything's model),
        loaded on first use and when its files changed; ModelLoadError when they are missing or broken."""
        if code in _MODEL_FREE or code not in table.PREPROCESSORS:
            raise errors.ModelLoadError(f"preprocessor {code!r} loads no model")
        paths = self._paths(code)
        key = "depth_anything" if code == "depth_anything" else _ANNOTATORS[code].key
        try:
            version = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
        except OSError as exc:
            raise errors.ModelLoadError(f"preprocessor {code!r}: its files cannot be read: {exc}") from exc
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.version == version:
                self._held.move_to_end(key)
                return held.detector
            self._held.pop(key, None)  # changed on disk (or new): the old one goes before the new is loaded
            while len(self._held) >= self.max_loaded:  # and room is made first: never max_loaded + 1 at once
                old, _ = self._held.popitem(last=False)
                log.info("preprocessor %s unloaded (least recently used)", old)
            detector = _move(self._load(code, paths), self.device)
            self._held[key] = _Held(detector, version)
            log.info("preprocessor %s loaded on %s", key, self.device)
            return detector

    def _paths(self, code: str) -> list[Path]:
        """The files `code` loads (for depth_anything: its folder's files), after `missing` said yes."""
        problem = table.missing(code, self.models_dir)
        if problem is not None:
            raise errors.ModelLoadError(f"preprocessor {code!r}: {problem}")
        if code == "depth_anything":
            folder = table.depth_model_folder(self.models_dir)
            assert folder is not None, "missing() found it"
            return sorted(p for p in folder.iterdir() if p.is_file())
        return [self.models_dir / table.FOLDER / name for name in table.PREPROCESSORS[code].needs]

    def _load(self, code: str, paths: list[Path]) -> Any:
        try:
            with _quiet(code):
                if code == "depth_anything":
                    return _depth_model(paths[0].parent)
                return _ANNOTATORS[code].load(*paths)
        except errors.PicserveError:
            raise
        except Exception as exc:  # torch.load's UnpicklingError, load_state_dict's RuntimeError, …
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            names = ", ".join(p.name for p in paths) if code != "depth_anything" else paths[0].parent.name
            raise errors.ModelLoadError(f"preprocessor {code!r}: {names} cannot be loaded: {why}") from exc


#: the shared caches of `control_map`, by (models folder, device)
_SHARED: dict[tuple[Path, str], Preprocessors] = {}
_SHARED_LOCK = threading.Lock()


def control_map(
    code: str,
    image: Image.Image,
    params: Mapping[str, Any],
    models_dir: Path,
    device: torch.device | str = "cpu",
) -> Image.Image:
    """`code`'s control map of `image`, through a `Preprocessors` shared per models folder and device."""
    key = (Path(models_dir), str(torch.device(device)))
    with _SHARED_LOCK:
        cache = _SHARED.get(key)
        if cache is None:
            cache = _SHARED[key] = Preprocessors(Path(models_dir), device)
    return cache.control_map(code, image, params)

"""Face restoration: faces found by a YuNet detector (models/facedetect), restored by a face model spandrel
loads (models/faces), pasted back feathered and blended with the original by a strength.

**Models** (`FaceModels`). A face detector is an ONNX file OpenCV's `cv2.FaceDetectorYN` runs: YuNet
(OpenCV zoo's `face_detection_yunet_2023mar.onnx`, MIT licence, 0.2 MB: boxes, scores and five
landmarks in one pass on the CPU, in milliseconds). Its graph takes `input` (1, 3, H, W), BGR 0..255 padded
to a multiple of 32, and gives per stride 8/16/32 `cls_*`, `obj_*` (N, 1), `bbox_*` (N, 4) and `kps_*`
(N, 10); a file without those outputs is refused. A face restorer is a file spandrel loads whose purpose
is "FaceSR": GFPGAN and RestoreFormer in spandrel itself; CodeFormer only where the operator installed
`spandrel-extra-arches` (its S-Lab licence is non-commercial, so picserve never installs it): when that
package is importable its architectures are added to spandrel's registry before the first face model
loads, else a CodeFormer file is a ModelLoadError that says so. Restorers run on the engine's device, in
bf16 on CUDA where the engine computes in bf16 and the architecture allows it, else in fp32
(`upscale.compute_dtype`: no face architecture supports fp16). Both kinds are kept in
`toolcache.ToolModels` caches, reloaded when their file changes.

**Detection** (`find_faces`). The image goes to the detector scaled down to at most DETECT_SIDE px on its
long side (YuNet is trained for 320–640 px inputs; large faces in a 4K image are found as well at 640),
and boxes and landmarks are scaled back. Faces whose eyes are closer than MIN_EYE_DISTANCE px are left
alone (nothing for a 512² restorer to work with), and at most MAX_FACES are kept, largest first (then
most confident).

**Restoration** (`restore`), as facexlib's FaceRestoreHelper does it for GFPGAN and CodeFormer: each
face's five landmarks are fitted to the FFHQ 512² template (a similarity, `estimateAffinePartial2D`
with LMEDS), the face is warped to 512² (grey outside the image), restored at the size the model needs,
warped back, and pasted with a feathered mask: the warped square eroded by 1/20 of its side and
Gaussian-blurred by as much. The paste is blended by `strength` s: result = image·(1 − s·mask) +
restored·(s·mask), face after face. Guarantees: s = 0 returns a copy of the input bit for bit without
running anything; every pixel outside each face's paste box (`paste_box`: the bounding box of its
warped 512² square) is the input's, bit for bit, at any strength; an image without faces comes back
unchanged. RGBA keeps its alpha as it was; grey and palette images are restored in RGB.

Model ranges: spandrel's RestoreFormer descriptor maps [0, 1] to [0, 1] itself, but its GFPGAN and
CodeFormer descriptors call the network on the image as given, while both networks were trained on
[-1, 1] (GFPGAN's and CodeFormer's own inference normalise with mean 0.5, std 0.5 and read the output
back from [-1, 1]); those two are called here on [-1, 1] directly (GFPGAN with its stored noise, so a
restore is deterministic).

**Pipeline** (`run`): the `domain_tools.FaceRestoreSpec` task (kind "faces"); `restore_image` is the one-call helper
for a generation's face-fix post-step; `identify` tells `models add` what a file is.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, domain_tools, errors, modelinfo, reference_images
from picserve.engine import devices, loader, memory, pipelines, toolcache, upscale
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback
from picserve.modelinfo import ToolFacts

__all__ = [
    "DEFAULT_BUDGET",
    "DETECT_SIDE",
    "FACE_SIZE",
    "FFHQ_TEMPLATE",
    "MAX_FACES",
    "MIN_EYE_DISTANCE",
    "NMS_THRESHOLD",
    "SCORE_THRESHOLD",
    "YUNET_OUTPUTS",
    "Face",
    "FaceModels",
    "alignment",
    "find_faces",
    "identify",
    "load_detector",
    "load_restorer",
    "paste_box",
    "restore",
    "restore_image",
    "run",
]

log = logging.getLogger(__name__)

#: the side of the aligned face the template is drawn for (and GFPGAN/CodeFormer run at)
FACE_SIZE = 512
#: facexlib's FFHQ five-point template at 512²: the eye on the image's left, the other eye, the nose tip,
#: the mouth corner on the image's left, the other (YuNet's order: the subject's right eye first)
FFHQ_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
#: the long side of the copy the detector sees (YuNet is trained for 320–640 px inputs)
DETECT_SIDE = 640
#: a detection's least score (YuNet: sqrt(class score × objectness)), and the IoU above which NMS drops one
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
#: detections kept before NMS (OpenCV's top_k)
TOP_K = 5000
#: faces restored per image at most, the largest first
MAX_FACES = 20
#: faces whose eyes are closer than this, in image pixels, are left alone (facexlib's eye_dist_threshold)
MIN_EYE_DISTANCE = 5.0
#: the outputs OpenCV's FaceDetectorYN reads by name (YuNet's 2023 graph)
YUNET_OUTPUTS = tuple(f"{name}_{stride}" for name in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32))
#: bytes of restorer weights kept loaded (GFPGAN v1.4: 340 MB in fp32, RestoreFormer 290 MB)
DEFAULT_BUDGET = 1 << 30
#: detectors kept loaded (YuNet: 0.2 MB)
_DETECTORS_KEPT = 2
#: the colour around the image where an aligned face reaches past it (facexlib's)
_BORDER = (132, 133, 135)
#: architectures whose network reads and writes [-1, 1] while spandrel's descriptor passes [0, 1] through
_SIGNED_RANGE = ("GFPGAN", "CodeFormer")
#: what a CodeFormer state dict has (spandrel_extra_arches' detection keys, two of them)
_CODEFORMER_KEYS = ("position_emb", "idx_pred_layer.1.weight")

_extra_lock = threading.Lock()
_extra_installed = False


@dataclass(frozen=True)
class Face:
    """One detected face, in the image's pixels."""

    #: x, y (top left), width, height
    box: tuple[float, float, float, float]
    score: float
    #: five (x, y): the subject's right eye, left eye, nose tip, right and left mouth corner (on an upright
    #: frontal face the first of each pair is on the image's left)
    landmarks: tuple[tuple[float, float], ...]

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    @property
    def eye_distance(self) -> float:
        (rx, ry), (lx, ly) = self.landmarks[0], self.landmarks[1]
        return math.hypot(lx - rx, ly - ry)


# -- models ----------------------------------------------------------------------------------------


class FaceModels:
    """The face detectors (models/facedetect) and restorers (models/faces) a worker keeps loaded.

    Args:
        catalog: where the codes are looked up.
        device: the engine's device (restorers run there; OpenCV's detector always runs on the CPU).
        dtype: the engine's compute dtype (a restorer runs in bf16 only where this is bf16, on CUDA).
        budget: bytes of restorer weights kept loaded (the most recent one always stays).
        score_threshold: a detection's least score.
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        budget: int = DEFAULT_BUDGET,
        score_threshold: float = SCORE_THRESHOLD,
    ) -> None:
        self.catalog, self.device, self.dtype = catalog, torch.device(device), dtype
        self.score_threshold = score_threshold
        self._detectors: toolcache.ToolModels[Any] = toolcache.ToolModels(
            catalog, "facedetect", "face detector", self._load_detector, _DETECTORS_KEPT
        )
        self._restorers: toolcache.ToolModels[Any] = toolcache.ToolModels(
            catalog, "faces", "face restorer", self._load_restorer, budget, weigh=_nbytes
        )

    def loaded(self) -> dict[str, list[str]]:
        """The codes held, least recently used first: {"facedetect": […], "faces": […]}."""
        return {"facedetect": self._detectors.loaded(), "faces": self._restorers.loaded()}

    def detector(self, code: str) -> Any:
        """Face detector `code`'s `cv2.FaceDetectorYN`; ModelLoadError (naming the code) when it is gone or
        no YuNet detector OpenCV runs."""
        return self._detectors.get(code)

    def restorer(self, code: str) -> Any:
        """Face restorer `code`'s spandrel `ImageModelDescriptor`, on the device in its compute dtype;
        ModelLoadError (naming the code) when it is gone or no face restorer spandrel loads."""
        return self._restorers.get(code)

    def _load_detector(self, entry: catalog_module.Entry) -> Any:
        detector = load_detector(entry.code, entry.path, self.score_threshold)
        log.info("face detector %s loaded (YuNet, OpenCV %s)", entry.code, _cv2().__version__)
        return detector

    def _load_restorer(self, entry: catalog_module.Entry) -> Any:
        descriptor = load_restorer(entry.code, entry.path, self.device, self.dtype)
        log.info(
            "face restorer %s loaded: %s, %.1f MiB, %s on %s",
            entry.code,
            descriptor.architecture.name,
            _nbytes(descriptor) / 2**20,
            str(descriptor.dtype).removeprefix("torch."),
            self.device,
        )
        return descriptor


def _cv2() -> Any:
    import cv2

    return cv2


def _nbytes(descriptor: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*descriptor.model.parameters(), *descriptor.model.buffers()])


def load_detector(
    code: str,
    path: Path,
    score_threshold: float = SCORE_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    top_k: int = TOP_K,
) -> Any:
    """OpenCV's YuNet `FaceDetectorYN` of the file `path`, tried once on a blank image; ModelLoadError
    (naming `code`) when the file is no ONNX graph with YuNet's outputs or OpenCV cannot run it."""
    problem = _yunet_problem(path)
    if problem:
        raise errors.ModelLoadError(f"face detector {code!r}: {path.name} {problem}")
    cv2 = _cv2()
    try:
        detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        detector.detect(np.zeros((320, 320, 3), dtype=np.uint8))
    except cv2.error as exc:
        raise errors.ModelLoadError(
            f"face detector {code!r}: OpenCV cannot run {path.name}: {_first_line(exc)}"
        ) from exc
    return detector


def _yunet_problem(path: Path) -> str | None:
    """Why the ONNX file at `path` is no YuNet graph (None: it has YuNet's input and outputs)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx's DecodeError, OSError: whatever the bytes caused
        return f"is not an ONNX model ({type(exc).__name__}: {_first_line(exc)})"
    outputs = {o.name for o in model.graph.output}
    missing = [name for name in YUNET_OUTPUTS if name not in outputs]
    if missing:
        return f"is no YuNet face detector: it lacks the outputs {', '.join(missing)}"
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if inputs != ["input"]:
        return f"is no YuNet face detector: its inputs are {inputs}, not one image named 'input'"
    return None


def load_restorer(code: str, path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """spandrel's descriptor of the face restorer at `path`, on `device` in its compute dtype, in eval mode.

    ModelLoadError (naming `code`) for a file spandrel cannot read, a CodeFormer file without
    spandrel-extra-arches, or a model that is no RGB face restorer (purpose "FaceSR")."""
    import spandrel

    _install_extra_arches()
    try:
        descriptor = toolcache.spandrel_load("face restorer", repr(code), path, device)
    except errors.ModelLoadError:
        if _is_codeformer(path) and not _extra_installed:
            raise errors.ModelLoadError(
                f"face restorer {code!r}: {path.name} is a CodeFormer model, which spandrel loads only with the "
                "spandrel-extra-arches package: picserve does not install it (CodeFormer's S-Lab licence is "
                "non-commercial); install it yourself if that licence suits you, or use GFPGAN or RestoreFormer"
            ) from None
        raise
    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "FaceSR":
        purpose = getattr(descriptor, "purpose", "?")
        raise errors.ModelLoadError(
            f"face restorer {code!r}: {path.name} is a {name} model for {purpose}, not a face restorer (FaceSR)"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise errors.ModelLoadError(
            f"face restorer {code!r}: {path.name} ({name}) maps {descriptor.input_channels} channels to "
            f"{descriptor.output_channels}; only RGB face restorers are run"
        )
    descriptor.to(dtype=upscale.compute_dtype(descriptor, torch.device(device), dtype))
    descriptor.eval()
    return descriptor


def _install_extra_arches() -> None:
    """spandrel-extra-arches' architectures (CodeFormer, …) in spandrel's registry, once, where the
    operator installed the package; nothing otherwise."""
    global _extra_installed
    with _extra_lock:
        if _extra_installed:
            return
        try:
            import spandrel_extra_arches  # type: ignore[import-not-found]  # the operator's choice, never a dependency
        except ImportError:
            return
        install = getattr(spandrel_extra_arches, "install", None)
        if install is not None:
            install(ignore_duplicates=True)
        else:  # releases before install(): add the registry by hand
            import spandrel

            spandrel.MAIN_REGISTRY.add(*spandrel_extra_arches.EXTRA_REGISTRY, ignore_duplicates=True)
        _extra_installed = True
        log.info("spandrel-extra-arches installed into spandrel's registry (CodeFormer and others)")


def _is_codeformer(path: Path) -> bool:
    """Whether the file's tensors are CodeFormer's (its detection keys, with or without a `params_ema.`)."""
    try:
        shapes, _ = modelinfo.read_shapes(path)
    except modelinfo.UNREADABLE:
        return False
    return all(any(name == key or name.endswith("." + key) for name in shapes) for key in _CODEFORMER_KEYS)


def _first_line(exc: BaseException) -> str:
    """An exception's message in one line: OpenCV's `… error: (-215:Assertion failed) …` line where it has
    one, else the first."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return next((line for line in lines if "error:" in line), lines[0])[:300]


# -- detection -------------------------------------------------------------------------------------


def find_faces(detector: Any, image: Image.Image) -> list[Face]:
    """The faces `detector` (a `cv2.FaceDetectorYN`) finds in `image`, in the image's pixels: the largest
    first (then the most confident), at most MAX_FACES, none whose eyes are closer than MIN_EYE_DISTANCE.
    The detector sees a copy scaled down to DETECT_SIDE px on its long side when the image is larger."""
    cv2 = _cv2()
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if size != (width, height):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    sx, sy = width / size[0], height / size[1]
    try:
        detector.setInputSize(size)
        _, rows = detector.detect(bgr)
    except cv2.error as exc:
        raise errors.GenerationError(
            f"the face detector failed on a {width}x{height} image: {_first_line(exc)}"
        ) from exc
    faces = []
    for row in rows if rows is not None else ():
        x, y, w, h = (float(v) for v in row[:4])
        points = tuple((float(row[4 + 2 * i]) * sx, float(row[5 + 2 * i]) * sy) for i in range(5))
        face = Face((x * sx, y * sy, w * sx, h * sy), float(row[14]), points)
        if face.eye_distance >= MIN_EYE_DISTANCE and np.isfinite(row[:15]).all():
            faces.append(face)
    faces.sort(key=lambda f: (-f.area, -f.score))
    return faces[:MAX_FACES]


# -- restoration -----------------------------------------------------------------------------------


def alignment(face: Face) -> np.ndarray | None:
    """The 2×3 similarity taking the image to the face's aligned FACE_SIZE² crop (its landmarks fitted to
    FFHQ_TEMPLATE with LMEDS, as facexlib does); None when the landmarks admit no fit."""
    cv2 = _cv2()
    points = np.asarray(face.landmarks, dtype=np.float32).reshape(5, 2)
    template = FFHQ_TEMPLATE * (FACE_SIZE / 512.0)
    matrix, _ = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)
    if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        return None
    return np.asarray(matrix, dtype=np.float64)


def paste_box(face: Face, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the pixels `restore` may change for `face` in an image of `size` (width, height):
    the bounding box of the face's aligned square warped back, widened by the pixels its edge blurs into,
    clipped to the image. None when the face cannot be aligned or its square misses the image."""
    matrix = alignment(face)
    return None if matrix is None else _box(matrix, size)


def _box(matrix: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    cv2 = _cv2()
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]], dtype=np.float64)
    points = corners @ inverse.T
    # a pixel of the image reaches into the square's bilinear edge within one face pixel of it
    reach = 1.0 / math.sqrt(abs(np.linalg.det(matrix[:, :2]))) + 1.0
    x0 = max(0, math.floor(points[:, 0].min() - reach))
    y0 = max(0, math.floor(points[:, 1].min() - reach))
    x1 = min(size[0], math.ceil(points[:, 0].max() + reach) + 1)
    y1 = min(size[1], math.ceil(points[:, 1].max() + reach) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def restore(
    image: Image.Image,
    faces: Sequence[Face],
    restorer: Any,
    strength: float,
    on_face: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """`image` with each of `faces` restored by `restorer` (a FaceSR descriptor) and blended in by
    `strength` (0..1): image·(1 − s·mask) + restored·(s·mask), the mask feathered inside each face's
    paste box (see the module docstring). Strength 0 or no faces: a copy of `image`, nothing run.

    RGBA (and LA, PA) keep their alpha; other modes come back RGB. `on_face(done, total)` after each
    face (it may raise TaskCanceled: the restore stops there).
    """
    strength = min(1.0, float(strength))
    if strength <= 0.0 or not faces:
        return image.copy()
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    work = image.convert("RGBA") if has_alpha else image.convert("RGB")
    pixels = np.array(work, dtype=np.uint8)  # writable; RGBA keeps its alpha column untouched
    rgb = np.ascontiguousarray(pixels[..., :3])
    device = _device_of(restorer)
    with torch.inference_mode(), devices.on_device(device):
        for done, face in enumerate(faces, start=1):
            matrix = alignment(face)
            box = None if matrix is None else _box(matrix, (rgb.shape[1], rgb.shape[0]))
            if matrix is not None and box is not None:
                _restore_one(pixels, rgb, matrix, box, restorer, strength)
            if on_face is not None:
                on_face(done, len(faces))
    return Image.fromarray(pixels, work.mode)


def _restore_one(
    pixels: np.ndarray,
    source: np.ndarray,
    matrix: np.ndarray,
    box: tuple[int, int, int, int],
    restorer: Any,
    strength: float,
) -> None:
    """Restore the face `matrix` aligns in `source` (the input's RGB) and blend it into `pixels` (the
    result so far) within `box`."""
    cv2 = _cv2()
    crop = cv2.warpAffine(
        source,
        matrix,
        (FACE_SIZE, FACE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_BORDER,
    )
    restored = _run_restorer(restorer, crop)
    x0, y0, x1, y1 = box
    inverse = cv2.invertAffineTransform(matrix)
    inverse[:, 2] -= (x0, y0)  # into the box's own coordinates
    size = (x1 - x0, y1 - y0)
    back = cv2.warpAffine(
        restored, inverse, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    mask = _soft_mask(inverse, size) * strength
    region = pixels[y0:y1, x0:x1, :3].astype(np.float32)
    blended = region * (1.0 - mask[..., None]) + back * mask[..., None]
    pixels[y0:y1, x0:x1, :3] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _soft_mask(inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """facexlib's paste mask in the box: the aligned square warped back, eroded by 2 px, then by a
    twentieth of its side, then Gaussian-blurred by as much (float32, 0..1)."""
    cv2 = _cv2()
    square = np.ones((FACE_SIZE, FACE_SIZE), dtype=np.float32)
    mask = cv2.warpAffine(square, inverse, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = max(1, int(math.sqrt(float(mask.sum()))) // 20)
    mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)
    return np.clip(mask, 0.0, 1.0)


def _device_of(restorer: Any) -> torch.device:
    return torch.device(getattr(restorer, "device", "cpu"))


def _model_side(restorer: Any) -> int:
    """The square side the restorer runs at: FACE_SIZE, or the least side its size requirements allow above it."""
    need = restorer.size_requirements
    side = max(FACE_SIZE, int(need.minimum))
    multiple = max(1, int(need.multiple_of))
    return -(-side // multiple) * multiple


def _run_restorer(restorer: Any, crop: np.ndarray) -> np.ndarray:
    """The restorer's output for an aligned face (RGB uint8, FACE_SIZE²): float32 RGB 0..255, FACE_SIZE²."""
    cv2 = _cv2()
    side = _model_side(restorer)
    if side != FACE_SIZE:
        crop = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
    device = _device_of(restorer)
    x = torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1).unsqueeze(0)
    x = x.to(restorer.dtype) / 255.0
    doing = f"restoring a face with {restorer.architecture.name}"
    with memory.tool_run(device, doing, functools.partial(loader.free_memory, device)):
        if restorer.architecture.name in _SIGNED_RANGE:
            model = restorer.model
            if model.training:
                model.eval()
            kwargs = {"return_rgb": False, "randomize_noise": False} if restorer.architecture.name == "GFPGAN" else {}
            out = (model(x * 2.0 - 1.0, **kwargs)[0] + 1.0) / 2.0
        else:
            out = restorer(x)
    face = out[0].float().clamp(0.0, 1.0).mul(255.0).permute(1, 2, 0).cpu().numpy()
    if face.shape[:2] != (FACE_SIZE, FACE_SIZE):
        face = cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(face, dtype=np.float32)


def restore_image(
    face_models: FaceModels,
    image: Image.Image,
    restorer_code: str,
    detector_code: str,
    strength: float,
    on_face: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """`image` with its faces found by detector `detector_code` and restored by `restorer_code` at
    `strength` (`find_faces`, then `restore`). Strength 0: a copy, nothing loaded; else both models are
    loaded first (a wrong code is an error whether or not the image has faces)."""
    if strength <= 0.0:
        return image.copy()
    detector = face_models.detector(detector_code)
    restorer = face_models.restorer(restorer_code)
    faces = find_faces(detector, image)
    log.debug("%d faces found in a %dx%d image", len(faces), image.width, image.height)
    return restore(image, faces, restorer, strength, on_face)


# -- models add / info -----------------------------------------------------------------------------


def identify(path: Path) -> ToolFacts:
    """What a face model file is, found by loading it as a worker will: an ONNX graph OpenCV's
    FaceDetectorYN runs with YuNet's outputs is kind "facedetect"; a file spandrel loads as a face restorer
    (purpose FaceSR) is kind "faces", its sidecar naming the architecture. Never raises for a bad file:
    `problem` says why it is neither."""
    if path.suffix.lower() == ".onnx":
        return _identify_detector(path)
    return _identify_restorer(path)


def _identify_detector(path: Path) -> ToolFacts:
    problem = _yunet_problem(path)
    if problem:
        return ToolFacts(None, problem=f"not a face detector: it {problem.removeprefix('is ')}"[:300])
    try:
        load_detector(path.stem, path)
    except errors.ModelLoadError as exc:
        return ToolFacts(None, problem=exc.message[:300])
    return ToolFacts("facedetect", details={"detector": "YuNet (OpenCV FaceDetectorYN)", "landmarks": 5})


def _identify_restorer(path: Path) -> ToolFacts:
    try:
        shapes, _ = modelinfo.read_shapes(path)
    except modelinfo.UNREADABLE as exc:
        return ToolFacts(None, problem=f"unreadable: {exc}"[:300])
    if not any(len(shape) == 4 and shape[1] == 3 for shape in shapes.values()):
        return ToolFacts(None, problem="it has no convolution over an image's channels, so it is no face restorer")
    import spandrel

    _install_extra_arches()
    if _is_codeformer(path) and not _extra_installed:
        return ToolFacts(
            None,
            details={"architecture": "CodeFormer"},
            problem="a CodeFormer model: spandrel loads it only with the spandrel-extra-arches package, which "
            "picserve does not install (CodeFormer's S-Lab licence is non-commercial)",
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        return ToolFacts(None, problem="spandrel recognises no face restoration architecture in it")
    except Exception as exc:  # the file's fault: spandrel raises what torch and the architectures raise
        return ToolFacts(None, problem=f"spandrel cannot load it: {type(exc).__name__}: {exc}"[:300])
    name, purpose = descriptor.architecture.name, descriptor.purpose
    details: dict[str, Any] = {
        "architecture": name,
        "purpose": purpose,
        "parameters": f"{sum(p.numel() for p in descriptor.model.parameters()):,}",
    }
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or purpose != "FaceSR":
        return ToolFacts(None, details=details, problem=f"a {name} model for {purpose}, not a face restorer (FaceSR)")
    return ToolFacts("faces", sidecar={"Architecture": name}, details=details)


# -- the pipeline ----------------------------------------------------------------------------------


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """The FaceRestoreSpec pipeline: the spec's image with its faces restored; `on_step` after each face
    (1.0 at once when there is none), `on_preview` with the result, small."""
    assert isinstance(spec, domain_tools.FaceRestoreSpec)
    face_models = getattr(engine, "faces", None)
    if face_models is None:
        raise errors.GenerationError("this worker's engine does no face restoration")
    if spec.image is None:
        raise errors.GenerationError("RawImage: the image is no longer in the store")
    image = reference_images.decode(spec.image, "RawImage")
    reported = False

    def progress(done: int, total: int) -> None:
        nonlocal reported
        reported = done == total
        on_step(done / total)

    result = restore_image(face_models, image, spec.restorer_code, spec.detector_code, spec.strength, progress)
    if on_preview is not None:
        on_preview(functools.partial(_preview, result))
    if not reported:
        on_step(1.0)
    return Generated([result], [], [""])


def _preview(result: Image.Image, side: int = 256) -> Image.Image:
    """The result small, in RGB (previews are JPEG)."""
    small = result.copy()
    small.thumbnail((side, side))
    return small.convert("RGB")


pipelines.register(domain_tools.FaceRestoreSpec.kind, run)

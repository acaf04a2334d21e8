"""Background models (models/background) run by rembg, and RemoveBackground's pipeline.

PICPIK's `RemoveBackground` and `RemoveBackgroundsInBatch` cut the subject out of each image (an RGBA
PNG) or return its mask. The segmentation is rembg's (the library this field uses: U²-Net, ISNet,
BiRefNet, … sessions over ONNX Runtime, alpha matting by pymatting), over the ONNX files the operator
installs; rembg never downloads anything here.

**Sessions** (`Segmenters`). A model's rembg session family (the catalog's `Entry.session`: its
sidecar's `Session`, else its file name) picks the rembg session class, which decides the input size
(320² for U²-Net and Silueta, 1024² for ISNet, BiRefNet, BRIA, BEN) and the normalisation. The
`*_custom` classes (`u2net_custom`, `dis_custom`, `ben_custom`) are made as rembg documents them, with
`model_path=` the file; since rembg 2.0.86 that path must lie inside `U2NET_HOME`, which is set to the
file's folder for the session's creation only (and restored). A family without a custom class
(`u2net`, `isnet-general-use`, `birefnet-general`, …) would look for `<home>/models/<family>/<family>.onnx`
and otherwise download it; it is made through a subclass whose `download_models` returns the
operator's file instead, so no download can start and the file keeps its own name (a symlink farm
under a private `U2NET_HOME` was the alternative; the subclass needs no files and cannot fall through
to `pooch`). Both subclasses also note the input size the session feeds the model (`input_size`, for
the auto-hair rule). Families that are not one-image → one-mask segmenters are refused (`sam` wants
prompts and two files, `u2net_cloth_seg` gives three garment masks, `withoutbg` and `atlascloud` send
the image to a remote service). ONNX Runtime runs on CUDA (`CUDAExecutionProvider` with the engine's
device index) when the engine's device is CUDA and the provider is there, else on the CPU with as many
intra-op threads as torch uses (the worker's one thread setting). A few sessions are kept, least
recently used first out; one is made again when its file changed (mtime or size) or its family did.

**Cut-out** (`cut_out`). The mask is the session's prediction (its own resize, normalisation and
min-max stretch) on the image, or with a `Box` on the box's crop widened by a small margin
(`BOX_MARGIN`: context for the model), with everything outside the box then set to 0: nothing outside
the box is ever opaque. Then (`finish`, which ExtractContents' point segmentation shares with this
module: engine/segment.py):

- without alpha matting the alpha is the mask (rembg's `putalpha_cutout`: straight colours; the
  thresholds change nothing);
- with it (`HairOptimization` "on", or "auto" when the mask's edge is soft), rembg's
  `alpha_matting_cutout` (closed-form matting and the foreground colours it estimates) with PICPIK's
  thresholds as the API documents them: mask values at or above `ForegroundThreshold` are foreground,
  at or below `BackgroundThreshold` background (rembg compares strictly, so it is given
  ForegroundThreshold − 1 and BackgroundThreshold + 1), both regions eroded by `ErodeSize` px (rembg's
  square structure; 0 is rembg's smallest, a 3×3 cross), the band between matted. The alpha is then
  pinned to the trimap: 255 exactly on the definite foreground, 0 on the definite background, at most
  254 in the matted band. So the opaque area is the eroded {mask ≥ ForegroundThreshold}, which can
  only shrink as the threshold rises (the solver left alone may put alpha 1.0 anywhere in the band,
  and a wider band could then be more opaque). When pymatting refuses the trimap (no definite
  foreground or background at all), the mask stands in for the matted alpha, pinned the same way.
  Matting takes about 0.5 GB and seconds per megapixel on a CPU (docs/performance.md), so above
  `MATTING_MAX_PIXELS` (2048²) it runs on a scaled-down copy, its alpha and colours scaled back up and
  pinned to the full-size trimap: the guarantees above hold at any size.

**Auto hair** (`is_soft`): the mask is resized to the size the model saw (its own pixels, so that
rembg's upscaling of a 320² mask does not read as softness; not above the image's own size), and its
edge width is measured: the
pixels between 10 % and 90 % (26..229) over the length of the 50 % contour (the foreground pixels
with a background 4-neighbour). A model's hard edge is 1–2 of its pixels wide; hair, fur, smoke and
motion blur make it wider. Matting runs when the mean width exceeds `SOFT_EDGE_WIDTH` (3 model
pixels). The rule reads the mask only, never the thresholds, so a threshold cannot switch the path.

Results are each input's size: RGBA (fully transparent pixels have colour 0: nothing of the
background leaks through them), or with `OnlyMask` the alpha channel that very cut-out would have
("L"), matting included. An input with its own alpha keeps it: the result's alpha is the product.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, errors, reference_images
from picserve.engine import pipelines, toolcache
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback

__all__ = [
    "BOX_MARGIN",
    "HAIR_MODES",
    "MATTING_MAX_PIXELS",
    "SOFT_EDGE_WIDTH",
    "UNSUPPORTED_FAMILIES",
    "Segmenters",
    "cut_out",
    "edge_width",
    "finish",
    "is_soft",
    "run",
]

log = logging.getLogger(__name__)

HAIR_MODES = ("auto", "on", "off")
#: auto hair: matting when the mask's mean edge width, in the model's own pixels, is above this
SOFT_EDGE_WIDTH = 3.0
#: with a Box, the model sees the box widened by this share of its longer side on every side (at least
#: 8 px), clipped to the image
BOX_MARGIN = 0.05
#: alpha matting's working size: closed-form matting takes about 0.5 GB of RAM and several seconds per
#: megapixel on a CPU, so a larger image (or box) is matted scaled down to this many pixels
MATTING_MAX_PIXELS = 2048 * 2048
#: rembg families that do not map one image to one foreground mask, and why
UNSUPPORTED_FAMILIES = {
    "sam": "SAM needs point prompts and an encoder and decoder file",
    "u2net_cloth_seg": "it segments garments (three masks), not a subject",
    "withoutbg": "it sends the image to a remote service",
    "atlascloud": "it sends the image to a remote service",
}
#: the mask values the edge-width rule counts as between background and foreground (10 %..90 %)
_SOFT_LOW, _SOFT_HIGH = 26, 229
#: sessions kept at once (a background model is tens to hundreds of MB)
_MAX_LOADED = 3


def _family(entry: catalog_module.Entry) -> str:
    """A background model's rembg session family (its sidecar's or file name's; U²-Net's by default)."""
    return entry.session or "u2net"


def _lib(name: str) -> Any:
    """An untyped library (rembg, onnxruntime, scipy), imported when first needed: rembg's first import
    compiles pymatting's numba code (about 80 s once, cached afterwards), which an engine that never
    cuts anything out should not pay for."""
    return importlib.import_module(name)


class Segmenters:
    """The background models' rembg sessions on one device: one per model code, a few at once
    (engine/toolcache.py), made again when the file or its rembg family changed."""

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: torch.device,
        max_loaded: int = _MAX_LOADED,
        threads: int | None = None,
    ) -> None:
        self.catalog, self.device = catalog, device
        self.max_loaded = max(1, max_loaded)
        self.threads = threads
        self._sessions = toolcache.ToolModels(
            catalog, "background", "background model", self._load, self.max_loaded, identity=_family
        )

    def loaded(self) -> list[str]:
        """The model codes whose sessions are held, least recently used first."""
        return self._sessions.loaded()

    def get(self, code: str) -> Any:
        """The rembg session of background model `code`, made on first use and when its file changed;
        ModelLoadError (naming the code) when the model is gone, broken, or no image segmenter."""
        return self._sessions.get(code)

    def _load(self, entry: catalog_module.Entry) -> Any:
        return self._make(entry.code, entry.path, _family(entry))

    def providers(self) -> list[Any]:
        """ONNX Runtime's providers for this device: CUDA with the device index when the device is CUDA
        and this onnxruntime build has the provider, else the CPU."""
        ort = _lib("onnxruntime")
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _options(self) -> Any:
        ort = _lib("onnxruntime")
        options = ort.SessionOptions()
        # the engine thread runs one task at a time: its ops use the cores torch is allowed, not a pool more
        options.intra_op_num_threads = max(1, self.threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return options

    def _make(self, code: str, path: Path, family: str) -> Any:
        sessions = _lib("rembg.sessions").sessions
        if family in UNSUPPORTED_FAMILIES:
            why = UNSUPPORTED_FAMILIES[family]
            raise errors.ModelLoadError(
                f"background model {code!r}: rembg session {family!r} is not supported here: {why}"
            )
        base = sessions.get(family)
        if base is None or not base.is_local() or base.requires_credentials():
            known = ", ".join(sorted(n for n in sessions if n not in UNSUPPORTED_FAMILIES and sessions[n].is_local()))
            raise errors.ModelLoadError(
                f"background model {code!r}: its Session {family!r} is no rembg session family run here "
                f"(known: {known})"
            )
        cls = _local_class(base, path, custom=family.endswith("_custom"))
        try:
            with _rembg_home(path.parent):
                session = cls(family, self._options(), providers=self.providers(), model_path=str(path))
        except errors.PicserveError:
            raise
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, …; rembg's ValueError
            why = str(exc).strip() or type(exc).__name__
            raise errors.ModelLoadError(
                f"background model {code!r}: onnxruntime cannot load {path.name}: {why}"
            ) from exc
        _check_signature(code, session.inner_session)
        session.model_code = code
        log.info("background model %s loaded (rembg %s) on %s", code, family, session.inner_session.get_providers()[0])
        return session


def _local_class(base: type[Any], path: Path, custom: bool) -> type[Any]:
    """`base` (a rembg session class) reading `path` and noting the input size it feeds the model.

    A `*_custom` class keeps its own `download_models` (rembg's check that `model_path` lies inside
    U2NET_HOME); any other family's returns `path`, where it would look in rembg's home and download.
    """

    def normalize(self: Any, img: Any, mean: Any, std: Any, size: tuple[int, int], *args: Any, **kwargs: Any) -> Any:
        self.input_size = (int(size[0]), int(size[1]))
        return base.normalize(self, img, mean, std, size, *args, **kwargs)

    members: dict[str, Any] = {"normalize": normalize, "input_size": None, "model_code": None}
    if not custom:
        members["download_models"] = classmethod(lambda cls, *args, **kwargs: str(path))
    return type(f"Local{base.__name__}", (base,), members)


@contextlib.contextmanager
def _rembg_home(folder: Path) -> Iterator[None]:
    """U2NET_HOME (rembg's model folder) set to `folder` for the block, as it was afterwards. Sessions are
    made on the engine thread only, so no other thread sees the change."""
    before = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = before


def _check_signature(code: str, inner: Any) -> None:
    """ModelLoadError unless the model takes one image tensor (1, 3, H, W) and gives a (N, C, H, W) mask."""
    inputs, outputs = inner.get_inputs(), inner.get_outputs()

    def shape(arg: Any) -> str:
        return f"{arg.name} {list(arg.shape)} {arg.type}"

    def rank(arg: Any) -> int | None:
        return len(arg.shape) if isinstance(arg.shape, list | tuple) else None

    problem = None
    if len(inputs) != 1:
        problem = f"it takes {len(inputs)} inputs ({', '.join(shape(i) for i in inputs)}), not one image"
    elif rank(inputs[0]) != 4 or (inputs[0].shape[1] not in (3, None) and not isinstance(inputs[0].shape[1], str)):
        problem = f"its input is {shape(inputs[0])}, not an image tensor (1, 3, H, W)"
    elif "float" not in inputs[0].type:
        problem = f"its input is {shape(inputs[0])}, not floating point"
    elif not outputs or rank(outputs[0]) not in (4, None):
        problem = f"its first output is {shape(outputs[0]) if outputs else 'missing'}, not a mask (N, C, H, W)"
    if problem:
        raise errors.ModelLoadError(f"background model {code!r} is no image segmenter: {problem}")


# -- the cut-out ------------------------------------------------------------------------------------


def cut_out(
    session: Any,
    image: Image.Image,
    box: tuple[int, int, int, int] | None = None,
    erode_size: int = 15,
    foreground_threshold: int = 240,
    background_threshold: int = 15,
    hair: str = "auto",
    only_mask: bool = False,
) -> Image.Image:
    """`image`'s subject cut out (RGBA), or with `only_mask` its alpha ("L"), both of the image's size.

    `session`: a rembg session (`Segmenters.get`); `box` (x1, y1, x2, y2), x2 and y2 exclusive: the
    subject lies inside it, and nothing outside it is opaque; `hair`: "on" / "off" / "auto" alpha
    matting with the trimap thresholds and erode size (see the module docstring). The session's mask
    is finished by `finish` (on the box's widened crop, with a Box).
    """
    _check_hair(hair)
    width, height = image.size

    def finished(part: Image.Image, mask: np.ndarray, drop: np.ndarray | None = None) -> Image.Image:
        return finish(
            part,
            mask,
            erode_size,
            foreground_threshold,
            background_threshold,
            hair,
            only_mask,
            model_size=getattr(session, "input_size", None),  # known once the session has predicted
            drop=drop,
        )

    if box is None:
        return finished(image, _predict(session, image.convert("RGB")))
    inner = _clamp(box, width, height)
    result = Image.new("L" if only_mask else "RGBA", image.size, 0)
    if inner[2] > inner[0] and inner[3] > inner[1]:
        region = _widen(inner, width, height)
        x0, y0 = region[:2]
        crop = image.crop(region)
        mask = _predict(session, crop.convert("RGB"))
        inside = np.zeros(mask.shape, dtype=bool)
        inside[inner[1] - y0 : inner[3] - y0, inner[0] - x0 : inner[2] - x0] = True
        mask[~inside] = 0
        # the matting may spread alpha past the box's edge: `drop` takes it back to 0 there
        result.paste(finished(crop, mask, drop=~inside), (x0, y0))
    return result


def finish(
    image: Image.Image,
    mask: np.ndarray,
    erode_size: int = 15,
    foreground_threshold: int = 240,
    background_threshold: int = 15,
    hair: str = "auto",
    only_mask: bool = False,
    model_size: tuple[int, int] | None = None,
    keep: np.ndarray | None = None,
    drop: np.ndarray | None = None,
) -> Image.Image:
    """A segmentation `mask` of `image` made into the cut-out (RGBA) or, with `only_mask`, its alpha ("L"),
    both of the image's size: RemoveBackground's and ExtractContents' common last step.

    `mask`: uint8, (height, width) of the image, 255 the subject, soft values where the model is
    unsure. `hair` "on", or "auto" when the mask's edge is soft (`is_soft`, measured at `model_size`,
    the size of the model's own mask: see the module docstring), mattes with PICPIK's thresholds and
    erode size (the alpha pinned to the trimap); else the alpha is the mask. `keep` and `drop` (bool,
    the image's shape): pixels whose alpha is then set to 255 and to 0 (`drop` last, so it wins); the
    auto-hair rule and the trimap read `mask` as given, so a caller makes the mask agree with them first.
    An image with its own alpha keeps it: the result's alpha is the product. Fully transparent pixels
    have colour 0, and `only_mask` gives exactly the alpha channel of the cut-out.
    """
    _check_hair(hair)
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape != (image.height, image.width):
        raise errors.GenerationError(
            f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.width}x{image.height}"
        )
    rgb = image.convert("RGB")
    own_alpha = np.asarray(image.getchannel("A")) if image.mode in ("RGBA", "LA", "PA") else None
    matting = hair == "on" or (hair == "auto" and is_soft(mask, model_size))
    if matting:
        alpha, colours = _matte(rgb, mask, erode_size, foreground_threshold, background_threshold)
    else:
        alpha, colours = mask.copy(), np.asarray(rgb).copy()
    if keep is not None:
        alpha[keep] = 255
    if drop is not None:
        alpha[drop] = 0
    if own_alpha is not None:  # the input's own transparency stays: 255 only where both are 255
        alpha = ((alpha.astype(np.uint16) * own_alpha + 127) // 255).astype(np.uint8)
    if only_mask:
        return Image.fromarray(alpha, "L")
    colours[alpha == 0] = 0
    return Image.fromarray(np.dstack([colours, alpha]), "RGBA")


def _check_hair(hair: str) -> None:
    if hair not in HAIR_MODES:
        raise errors.GenerationError(f"HairOptimization {hair!r} is none of {', '.join(HAIR_MODES)}")


def _clamp(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in box)
    return max(0, min(x1, width)), max(0, min(y1, height)), max(0, min(x2, width)), max(0, min(y2, height))


def _widen(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    margin = max(8, round(BOX_MARGIN * max(x2 - x1, y2 - y1)))
    return max(0, x1 - margin), max(0, y1 - margin), min(width, x2 + margin), min(height, y2 + margin)


def _predict(session: Any, image: Image.Image) -> np.ndarray:
    """The session's mask of `image` (uint8, the image's size), writable."""
    code = getattr(session, "model_code", None) or getattr(session, "model_name", "?")
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # a uniform prediction: rembg's stretch is 0/0
            masks = session.predict(image)
    except Exception as exc:
        raise errors.GenerationError(f"background model {code!r} failed on the image: {exc}") from exc
    if not masks:
        raise errors.GenerationError(f"background model {code!r} gave no mask")
    mask = masks[0].convert("L")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.LANCZOS)
    return np.array(mask, dtype=np.uint8)


def _matte(
    image: Image.Image, mask: np.ndarray, erode_size: int, foreground_threshold: int, background_threshold: int
) -> tuple[np.ndarray, np.ndarray]:
    """rembg's alpha matting of `image` by `mask` with PICPIK's thresholds: (alpha, colours), the alpha
    pinned to the trimap (255 on its definite foreground, 0 on its background, ≤ 254 between) and the
    colours the matting estimated in the band between (the image's own elsewhere). Above
    MATTING_MAX_PIXELS the matting runs on a copy scaled down to that many pixels (erode size with it)
    and its alpha and colours are scaled back up; the trimap that pins them is the full-size one."""
    bg = _lib("rembg.bg")
    # rembg: foreground where mask > t, background where mask < t; PICPIK's thresholds are inclusive
    fg_rembg, bg_rembg = int(foreground_threshold) - 1, int(background_threshold) + 1
    erode = max(0, int(erode_size))
    definite_fg, definite_bg = _trimap(mask, fg_rembg, bg_rembg, erode)
    colours = np.asarray(image).copy()
    scale = min(1.0, math.sqrt(MATTING_MAX_PIXELS / (image.width * image.height)))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small_image, small_mask = image, Image.fromarray(mask, "L")
    if scale < 1.0:
        small_image = image.resize(size, Image.Resampling.BOX)
        small_mask = small_mask.resize(size, Image.Resampling.BILINEAR)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            matted = bg.alpha_matting_cutout(small_image, small_mask, fg_rembg, bg_rembg, round(erode * scale))
    except ValueError:  # pymatting: the trimap has no definite foreground, or no background
        alpha = mask.copy()
    else:
        if scale < 1.0:
            matted = matted.resize(image.size, Image.Resampling.BILINEAR)
        matted = np.asarray(matted)
        alpha = matted[..., 3].copy()
        band = ~(definite_fg | definite_bg)
        colours[band] = matted[..., :3][band]
    np.minimum(alpha, 254, out=alpha)
    alpha[definite_fg] = 255
    alpha[definite_bg] = 0
    return alpha, colours


def _trimap(mask: np.ndarray, fg_rembg: int, bg_rembg: int, erode: int) -> tuple[np.ndarray, np.ndarray]:
    """The definite foreground and background of rembg's `alpha_matting_cutout` trimap (its own rule)."""
    ndimage = _lib("scipy.ndimage")
    structure = np.ones((erode, erode), dtype=np.uint8) if erode > 0 else None
    definite_fg = ndimage.binary_erosion(mask > fg_rembg, structure=structure)
    definite_bg = ndimage.binary_erosion(mask < bg_rembg, structure=structure, border_value=1)
    definite_bg &= ~definite_fg  # rembg writes the background last; with sane thresholds they never meet
    return definite_fg, definite_bg


def edge_width(mask: np.ndarray, model_size: tuple[int, int] | None = None) -> float:
    """The mask's mean edge width in pixels of the model's input: the pixels between 10 % and 90 % over
    the length of the 50 % contour. `model_size` (width, height): the input size the model saw; the mask
    is measured at it, or along an axis where the image is smaller at the image's own size (the finest
    detail there is; an upscaled image's edges are no softer than the image's). 0 without an edge."""
    height, width = mask.shape
    if model_size is not None:
        size = (min(int(model_size[0]), width), min(int(model_size[1]), height))
        if size != (width, height):
            mask = np.asarray(Image.fromarray(mask, "L").resize(size, Image.Resampling.BILINEAR))
    inside = mask >= 128
    eroded = inside.copy()  # 4-neighbour erosion, the image's border counted as inside
    eroded[1:, :] &= inside[:-1, :]
    eroded[:-1, :] &= inside[1:, :]
    eroded[:, 1:] &= inside[:, :-1]
    eroded[:, :-1] &= inside[:, 1:]
    contour = int(np.count_nonzero(inside & ~eroded))
    if contour == 0:
        return 0.0
    between = int(np.count_nonzero((mask >= _SOFT_LOW) & (mask <= _SOFT_HIGH)))
    return between / contour


def is_soft(mask: np.ndarray, model_size: tuple[int, int] | None = None) -> bool:
    """Whether "auto" hair mattes this mask: its edge is wider than SOFT_EDGE_WIDTH model pixels."""
    return edge_width(mask, model_size) > SOFT_EDGE_WIDTH


# -- the pipeline ----------------------------------------------------------------------------------


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """RemoveBackground(sInBatch): one cut-out (or mask) per image of `spec`, in order; `on_step` after
    each image (a cancel stops between images), `on_preview` with the latest result, small."""
    assert isinstance(spec, domain.CutoutSpec)
    segmenters = getattr(engine, "segmenters", None)
    if segmenters is None:
        raise errors.GenerationError("this worker's engine does no background removal")
    session = segmenters.get(spec.model_code)
    count = len(spec.images)
    results: list[Image.Image] = []
    for i, text in enumerate(spec.images):
        field = "RawImage" if count == 1 else f"RawImages[{i}]"
        if text is None:
            raise errors.GenerationError(f"{field}: the image is no longer in the store")
        result = cut_out(
            session,
            reference_images.decode(text, field),
            box=spec.box,
            erode_size=spec.erode_size,
            foreground_threshold=spec.foreground_threshold,
            background_threshold=spec.background_threshold,
            hair=spec.hair,
            only_mask=spec.only_mask,
        )
        results.append(result)
        if on_preview is not None:
            on_preview(functools.partial(_preview, result))
        on_step((i + 1) / count)
    return Generated(results, [], [""] * count)


def _preview(result: Image.Image, side: int = 128) -> Image.Image:
    """A result small, in RGB (previews are JPEG): a cut-out over a grey checkerboard."""
    small = result.copy()
    small.thumbnail((side, side))
    if small.mode != "RGBA":
        return small.convert("RGB")
    ys, xs = np.indices((small.height, small.width))
    board = np.where(((xs // 8 + ys // 8) % 2 == 0)[..., None], 204, 153).astype(np.uint8).repeat(3, axis=2)
    backdrop = Image.fromarray(board, "RGB").convert("RGBA")
    return Image.alpha_composite(backdrop, small).convert("RGB")


pipelines.register(domain.CutoutSpec.kind, run)

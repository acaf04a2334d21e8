"""What a model file is, read from its tensor shapes without torch and without running any pickle code.

safetensors: the JSON header. `.pt`/`.bin`: the pickle inside the zip, read by an unpickler that only
knows the few names a tensor checkpoint uses and builds shape placeholders instead of tensors.

The widths that decide compatibility: the UNet's cross-attention width (2048 for SDXL, 768 for SD1,
1024 for SD2) and the two text encoders' widths (768 and 1280 for SDXL). A sub-model fits a main model
when every width it has, in every part, is the main model's, and it has every part the main model needs
(an SDXL embedding: vectors for both text encoders; a LoRA touching the text encoders: both of them).

For main models it also reads what the API checks before queueing: the depth of the first text encoder
(the deepest ClipSkip) and the UNet's input channels (9: an inpainting model); whether it is a
v-prediction / zero-terminal-SNR model (the `v_pred` and `ztsnr` keys NoobAI-XL v-pred files carry, or a
diffusers folder's scheduler config); and its storage dtype. For VAEs: their latent channels, which must
be the main model's.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "UNREADABLE",
    "Info",
    "ToolFacts",
    "allowed_global",
    "base_of_cross",
    "compatible",
    "inspect",
    "misfit",
    "read_shapes",
    "scale_in_name",
    "trigger_words",
]

_BASES = {2048: "SDXL", 768: "SD1", 1024: "SD2"}

#: the parts of a model that widths are read for, as named in messages
_PARTS = {"cross": "UNet cross-attention", "te1": "first text encoder", "te2": "second text encoder"}
_ENCODER_NAMES = {"te1": "CLIP-L", "te2": "OpenCLIP-G"}
_TEXT_ENCODERS = ("te1", "te2")
_EMBEDDING_KEYS = {"te1": "clip_l", "te2": "clip_g"}

#: tensor name → shape
Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Info:
    #: "SDXL", "SD1", "SD2" or "custom (cross-attention N)"; "unknown" when the shapes say nothing
    base: str = "unknown"
    #: part → every width the file's tensors have there: cross (UNet cross-attention), te1/te2 (text
    #: encoders), contexts (a hypernetwork's context widths). A part the file does not have is absent.
    dims: dict[str, Any] = field(default_factory=dict)
    trigger_words: tuple[str, ...] = ()
    #: why the file cannot be used at all (unreadable, not a model of its kind)
    problem: str | None = None
    #: main models: layers of the first text encoder, so the deepest ClipSkip (None: not known)
    text_encoder_layers: int | None = None
    #: main models: the UNet's input channels, 4, or 9 for an inpainting model (None: not known)
    unet_in_channels: int | None = None
    #: main models: "v" (v-prediction: a `v_pred` key, as NoobAI-XL v-pred files carry, or a diffusers
    #: scheduler config's v_prediction), "epsilon", or None when a single file does not say (epsilon)
    prediction: str | None = None
    #: main models: trained with zero terminal SNR (a `ztsnr` key, or rescale_betas_zero_snr); None: not said
    zero_terminal_snr: bool | None = None
    #: the storage dtype of most of a safetensors file's tensors, as torch names it ("float16",
    #: "bfloat16", "float8_e4m3fn", …); None for other files and folders
    storage_dtype: str | None = None
    #: control models: "controlnet", "union" (a ControlNet-Union) or "ipadapter"; None for other kinds
    control: str | None = None


@dataclass(frozen=True)
class ToolFacts:
    """What a model file of an image tool is (an upscaler or an eraser spandrel loads, a segmentation
    model rembg runs), as engine/toolfiles.py finds out by loading it: `models add` files it by these."""

    #: "upscale", "inpaint" or "background"; None when no library takes the file (`problem` says why)
    kind: str | None
    #: what the sidecar records: Architecture and Scale (upscalers), Architecture (erasers), Session
    #: (background models)
    sidecar: dict[str, Any] = field(default_factory=dict)
    #: more to show in `models info` (purpose, inputs, parameters)
    details: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


#: what reading a damaged, truncated or foreign model file raises (as opposed to a bug)
UNREADABLE = (
    OSError,
    ValueError,
    struct.error,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    KeyError,
    EOFError,
    StopIteration,
)


def compatible(main: Info, sub: Info, kind: str) -> bool:
    """Whether a LoRA, embedding or hypernetwork fits a main model (see `misfit`)."""
    return misfit(main, sub, kind) is None


def misfit(main: Info, sub: Info, kind: str) -> str | None:
    """Why a LoRA, embedding or hypernetwork does not fit a main model, or None when it fits.

    Every width the sub-model has must be the main model's in the same part (a width the main model's
    file does not tell passes), and it must have every part the main model needs: an embedding, vectors
    for each text encoder; a LoRA with text-encoder weights, weights for each text encoder.
    """
    if sub.problem:
        return sub.problem
    if kind == "vae":  # decoded with the main model's VAE config: the latent channels must be the same
        have, need = _widths(sub.dims.get("latent")), _widths(main.dims.get("latent"))
        if have and need and set(have) != set(need):
            return f"it decodes {_listed(have)}-channel latents, the main model makes {_listed(need)}-channel ones"
        return None
    if kind == "hypernetwork":
        contexts, cross = _widths(sub.dims.get("contexts")), _widths(main.dims.get("cross"))
        if contexts and cross and not set(cross) <= set(contexts):
            return (
                f"it has layers for context widths {_listed(contexts)}, "
                f"not for the main model's cross-attention width {_listed(cross)}"
            )
        return None
    for part in ("te1", "te2") if kind == "embedding" else ("cross", "te1", "te2"):
        have, need = _widths(sub.dims.get(part)), _widths(main.dims.get(part))
        if have and need and set(have) != set(need):
            widths = "widths are" if len(set(have)) > 1 else "width is"
            return f"its {_PARTS[part]} {widths} {_listed(have)}, the main model's is {_listed(need)}"
    if kind == "embedding" or (kind == "lora" and any(_widths(sub.dims.get(p)) for p in _TEXT_ENCODERS)):
        for part in _needed_text_encoders(main):
            if not _widths(sub.dims.get(part)):
                return _missing(kind, part, main)
    return None


def _needed_text_encoders(main: Info) -> tuple[str, ...]:
    """The text encoders the main model has; an SDXL pipeline has both when its file does not tell."""
    known = tuple(part for part in _TEXT_ENCODERS if _widths(main.dims.get(part)))
    return known or _TEXT_ENCODERS


def _missing(kind: str, part: str, main: Info) -> str:
    encoder = f"the {_PARTS[part]} ({_ENCODER_NAMES[part]}, {_listed(_widths(main.dims.get(part))) or '?'} wide)"
    if kind == "embedding":
        return (
            f"it has no {_EMBEDDING_KEYS[part]} vectors, for {encoder}: "
            "an SDXL embedding has clip_l and clip_g vectors, one set per text encoder"
        )
    return (
        f"it has text-encoder weights but none for {encoder}: "
        "it was made for a model with one text encoder (an SDXL LoRA has them for both, or none)"
    )


def _widths(value: Any) -> tuple[int, ...]:
    """A part's widths as a tuple: None (absent), one int, or a sequence of ints."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(value)


def _listed(widths: tuple[int, ...]) -> str:
    return " and ".join(str(w) for w in sorted(set(widths)))


def inspect(kind: str, path: Path) -> Info:
    """What the file (or diffusers folder) at `path`, a model of `kind`, is; never raises for a bad file."""
    if kind in ("background", "facedetect"):
        return _onnx_file(path)
    if kind in ("segment", "caption"):
        return _tool_folder(kind, path)
    try:
        if path.is_dir():
            if kind == "controlnet":
                return _controlnet_folder(path)
            return _diffusers_vae_folder(path) if kind == "vae" else _diffusers_folder(path)
        shapes, metadata = _read(path)
    except UNREADABLE as exc:
        return Info(problem=f"unreadable {path.suffix} file: {exc}")
    if kind == "controlnet":
        return _controlnet(shapes, path)
    if kind in ("upscale", "inpaint", "faces"):  # what it is, spandrel says when a worker (or `models add`) loads it
        return Info(storage_dtype=_storage_dtype(path)) if shapes else Info(problem=f"{path.name} holds no tensors")
    dims_of = {
        "main": _main_dims,
        "lora": _lora_dims,
        "embedding": _embedding_dims,
        "hypernetwork": _hypernetwork_dims,
        "vae": _vae_dims,
    }
    dims = dims_of[kind](shapes)
    if kind == "main":
        return Info(
            base=_base(dims),
            dims=dims,
            text_encoder_layers=_layer_count(shapes),
            unet_in_channels=_first(shapes, r"^model\.diffusion_model\.input_blocks\.0\.0\.weight$", 1),
            prediction="v" if "v_pred" in shapes else None,
            zero_terminal_snr=True if "ztsnr" in shapes else None,
            storage_dtype=_storage_dtype(path),
        )
    if kind == "vae":
        return Info(dims=dims, storage_dtype=_storage_dtype(path))
    if kind == "lora" and (problem := _lora_layout_problem(shapes)):
        return Info(problem=problem)
    return Info(base=_base(dims), dims=dims, trigger_words=_trigger_words(metadata) if kind == "lora" else ())


#: the tensor names of every LoRA-like layout picserve applies (engine/lora/)
_LORA_TENSORS = re.compile(
    r"[._](lora_down|lora_up|lora_mid|lora_A|lora_B|lora\.(down|up)|lora_linear_layer\.(down|up)|lora_magnitude_vector"
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](_[ab])?|lokr_t2|diff|diff_b|dora_scale|alpha)(\.weight)?$"
)
#: LyCORIS algorithms picserve does not apply, by a tensor name only they have
_UNSUPPORTED = {"OFT/BOFT": re.compile(r"[._](oft_blocks|oft_diag|oft_r)$"), "(IA)³": re.compile(r"[._]on_input$")}


def _lora_layout_problem(shapes: Shapes) -> str | None:
    """Why a file in lora/ is none of the layouts picserve applies, or None."""
    for algorithm, pattern in _UNSUPPORTED.items():
        if any(pattern.search(k) for k in shapes):
            return f"a LyCORIS {algorithm} file, which picserve does not apply (LoRA, LoCon, LoHa, LoKr, full, DoRA)"
    unknown = sorted(k for k in shapes if not _LORA_TENSORS.search(k))
    if shapes and len(unknown) == len(shapes):
        shown = ", ".join(unknown[:3]) + (f" … ({len(unknown) - 3} more)" if len(unknown) > 3 else "")
        return f"none of its {len(shapes)} tensors is of a LoRA layout picserve knows ({shown})"
    return None


def _base(dims: dict[str, Any]) -> str:
    def one(part: str) -> int | None:
        widths = _widths(dims.get(part))
        return widths[0] if widths else None

    cross = one("cross")
    contexts = _widths(dims.get("contexts"))
    if cross is None and contexts:
        cross = 2048 if 2048 in contexts else contexts[0]
    te1, te2 = one("te1"), one("te2")
    if cross is None and te2 is not None:
        cross = (te1 or 0) + te2
    if cross is None and te1 is not None:
        cross = te1
    return base_of_cross(cross)


def base_of_cross(cross: int | None) -> str:
    """The base model family a UNet cross-attention width means ("SDXL" for 2048, …); "unknown" for None."""
    if cross is None:
        return "unknown"
    return _BASES.get(cross) or f"custom (cross-attention {cross})"


def read_shapes(path: Path) -> tuple[Shapes, dict[str, str]]:
    """Every tensor's name → shape and the safetensors `__metadata__` ({} for a pickle), as `inspect` reads them.

    Raises what reading raises for a bad file (OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, …).
    """
    return _read(path)


def trigger_words(metadata: dict[str, str]) -> tuple[str, ...]:
    """A LoRA's trigger words from its kohya training metadata (`ss_tag_frequency`), as the catalog reads them."""
    return _trigger_words(metadata)


def allowed_global(module: str, name: str) -> bool:
    """Whether a model file's pickle may name `module.name`: one of the few names the shape reader knows."""
    try:
        _ShapeUnpickler(io.BytesIO()).find_class(module, name)
    except pickle.UnpicklingError:
        return False
    return True


# --- reading shapes ---------------------------------------------------------------------------
def _read(path: Path) -> tuple[Shapes, dict[str, str]]:
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
            data = f.seek(0, 2) - 8 - length
        metadata = header.pop("__metadata__", {}) or {}
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if end > data:  # a download cut short: refused before a worker tries to load it
            raise ValueError(f"truncated: its tensors need {end} bytes of data, the file holds {max(data, 0)}")
        return {k: tuple(v["shape"]) for k, v in header.items()}, metadata
    return _flatten(_load_pickle(path)), {}


class _Shape(tuple[int, ...]):
    """Stands in for a tensor: its shape only."""


class _Storage:
    """Stands in for a tensor's storage: nothing is read."""

    def __init__(self, *args: object) -> None:
        pass


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], *args: object) -> _Shape:
    return _Shape(size)


def _rebuild_parameter(data: _Shape, *args: object) -> _Shape:
    return data


class _ShapeUnpickler(pickle.Unpickler):
    """Builds shape placeholders; any name outside this list is refused, so no pickle code ever runs."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> _Storage:
        return _Storage()


def _load_pickle(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        with archive.open(name) as f:
            return _ShapeUnpickler(f).load()


def _flatten(obj: Any, prefix: str = "") -> Shapes:
    """Nested dicts/lists of shapes → {"a.b.0.c": shape}; int keys (hypernetwork widths) kept as text."""
    out: Shapes = {}
    if isinstance(obj, _Shape):
        out[prefix.rstrip(".")] = tuple(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
    return out


# --- per kind ------------------------------------------------------------------------------------
def _first(shapes: Shapes, pattern: str, axis: int) -> int | None:
    regex = re.compile(pattern)
    return next((s[axis] for k, s in sorted(shapes.items()) if regex.search(k) and len(s) > abs(axis)), None)


def _all(shapes: Shapes, pattern: str, axis: int) -> tuple[int, ...]:
    """Every distinct width along `axis` of the tensors whose names match `pattern`, smallest first."""
    regex = re.compile(pattern)
    return tuple(sorted({s[axis] for k, s in shapes.items() if regex.search(k) and len(s) > abs(axis)}))


def _parts(**widths: tuple[int, ...]) -> dict[str, Any]:
    """Only the parts the file has."""
    return {part: found for part, found in widths.items() if found}


def _main_dims(shapes: Shapes) -> dict[str, Any]:
    te1 = r"(embedders\.0\.transformer|cond_stage_model\.transformer)\.text_model\.embeddings\.token_embedding\.weight$"
    return _parts(
        cross=_all(shapes, r"attn2\.to_[kv]\.weight$", 1),
        te1=_all(shapes, te1, 1),
        te2=_all(shapes, r"embedders\.1\.model\.token_embedding\.weight$", 1),
        latent=_all(shapes, r"^first_stage_model\.decoder\.conv_in\.weight$", 1),
    )


def _vae_dims(shapes: Shapes) -> dict[str, Any]:
    # `decoder.conv_in` takes the latents, in the original (LDM) layout and in diffusers' alike
    return _parts(latent=_all(shapes, r"^(first_stage_model\.|vae\.)?decoder\.conv_in\.weight$", 1))


#: safetensors dtype names → torch's
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _storage_dtype(path: Path) -> str | None:
    """The dtype most of a safetensors file's floating-point tensors are stored in (torch's name for it)."""
    if path.suffix != ".safetensors":
        return None
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if length <= 100_000_000 else {}
    except (OSError, ValueError, struct.error):
        return None
    counts = collections.Counter(
        str(v["dtype"]) for k, v in header.items() if k != "__metadata__" and str(v.get("dtype")) in _DTYPES
    )
    return _DTYPES[counts.most_common(1)[0][0]] if counts else None


def _layer_count(shapes: Shapes) -> int | None:
    """The first text encoder's layers, counted in a single-file checkpoint (SDXL's, or SD1's layout)."""
    regex = re.compile(
        r"^(conditioner\.embedders\.0|cond_stage_model)\.transformer\.text_model\.encoder\.layers\.(\d+)\."
    )
    layers = {int(m.group(2)) for k in shapes if (m := regex.match(k))}
    return max(layers) + 1 if layers else None


def _lora_dims(shapes: Shapes) -> dict[str, Any]:
    # kohya: lora_unet_…attn2_to_k.lora_down.weight; diffusers/PEFT: unet.….attn2.to_k.lora_A.weight;
    # LyCORIS: …hada_w1_b, …lokr_w1/lokr_w2 (or their _b factors), …diff. The input width of every
    # attention projection: to_k/to_v of attn2 take the cross-attention width, q/k/v/out_proj of a text
    # encoder take its width. kohya's `lora_te_` is a one-encoder model's (SD1/SD2).
    projection = r"[._](q|k|v|out)_proj[._]"
    return _parts(
        cross=_input_widths(shapes, r"attn2[._]to_[kv][._]"),
        te1=_input_widths(shapes, r"^(lora_te1_|text_encoder\.|lora_te_).*" + projection),
        te2=_input_widths(shapes, r"^(lora_te2_|text_encoder_2\.).*" + projection),
    )


#: the tensors of a LoRA-like layer whose last axis is the layer's input width
_INPUT_SIDE = r"((lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight|hada_w[12]_b|diff)$"


def _input_widths(shapes: Shapes, layer: str) -> tuple[int, ...]:
    """Every distinct input width of the linear layers matching `layer`, smallest first. A LoKr layer's
    ΔW is w1 ⊗ w2: its input width is the product of its two factors' (each whole or its `_b` half)."""
    regex, lokr = re.compile(layer + r".*" + _INPUT_SIDE), re.compile(layer + r".*lokr_w([12])(_b)?$")
    widths = {s[-1] for k, s in shapes.items() if len(s) == 2 and regex.search(k)}
    factors: dict[str, dict[str, int]] = {}
    for key, shape in shapes.items():
        if len(shape) == 2 and (match := lokr.search(key)):
            factors.setdefault(key[: match.start()], {})[match.group(1)] = shape[-1]
    widths |= {sides["1"] * sides["2"] for sides in factors.values() if len(sides) == 2}
    return tuple(sorted(widths))


def _embedding_dims(shapes: Shapes) -> dict[str, Any]:
    if "clip_l" in shapes or "clip_g" in shapes:  # SDXL: one set of vectors per text encoder
        return _parts(te1=_all(shapes, r"^clip_l$", -1), te2=_all(shapes, r"^clip_g$", -1))
    # SD1/SD2: one set of vectors, for their one text encoder
    return _parts(te1=_all(shapes, r"(string_to_param\.\*|emb_params)$", -1))


def _hypernetwork_dims(shapes: Shapes) -> dict[str, Any]:
    contexts = tuple(sorted({int(k.split(".")[0]) for k in shapes if k.split(".")[0].isdigit()}))
    return {"contexts": contexts}


def _trigger_words(metadata: dict[str, str]) -> tuple[str, ...]:
    """kohya training metadata: the instance words of `N_words` folders, else the most frequent tag."""
    try:
        frequencies = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return ()
    words = [m.group(1).strip() for d in frequencies if (m := re.match(r"^\d+_(.+)$", d))]
    if words:
        return tuple(dict.fromkeys(words))
    counts: collections.Counter[str] = collections.Counter()
    for tags in frequencies.values():
        counts.update({tag.strip(): n for tag, n in tags.items()})
    return tuple(tag for tag, _ in counts.most_common(1))


def _diffusers_folder(path: Path) -> Info:
    def config(sub: str) -> dict[str, Any]:
        file = path / sub / "config.json"
        return json.loads(file.read_text()) if file.exists() else {}

    unet, text_encoder = config("unet"), config("text_encoder")
    dims = _parts(
        cross=_widths(unet.get("cross_attention_dim")),
        te1=_widths(text_encoder.get("hidden_size")),
        te2=_widths(config("text_encoder_2").get("hidden_size")),
        latent=_widths(config("vae").get("latent_channels")),
    )
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else {}
    prediction = scheduler.get("prediction_type")
    return Info(
        base=_base(dims),
        dims=dims,
        text_encoder_layers=text_encoder.get("num_hidden_layers"),
        unet_in_channels=unet.get("in_channels"),
        prediction={"v_prediction": "v", "epsilon": "epsilon"}.get(prediction) if prediction else None,
        zero_terminal_snr=scheduler.get("rescale_betas_zero_snr"),
    )


def _diffusers_vae_folder(path: Path) -> Info:
    """A diffusers AutoencoderKL folder (config.json and its weights)."""
    config = json.loads((path / "config.json").read_text())
    return Info(dims=_parts(latent=_widths(config.get("latent_channels"))))


#: a control model's cross-attention keys: diffusers layout, original (ldm) layout
_CONTROL_CROSS = re.compile(
    r"(^|\.)(down_blocks|input_blocks)\.\d+\.(attentions\.\d+|\d+)\.transformer_blocks\.0\.attn2\.to_k\.weight$"
)


def _controlnet(shapes: Shapes, path: Path) -> Info:
    """A ControlNet single file: its cross-attention width (SDXL's is 2048) and whether it is a Union."""
    # a control-LoRA (Stability's control-lora-*): ComfyUI tells it by its `lora_controlnet` key
    if "lora_controlnet" in shapes or any(key.endswith((".up", ".down")) for key in shapes):
        return Info(problem=f"{path.name} is a control-LoRA, which picserve does not load (use a full ControlNet)")
    cross = next((shape[1] for key, shape in shapes.items() if _CONTROL_CROSS.search(key) and len(shape) == 2), None)
    if cross is None or not any("controlnet_cond_embedding" in k or "input_hint_block" in k for k in shapes):
        return Info(problem=f"{path.name} holds no ControlNet (no hint embedding or cross-attention tensors)")
    dims = _parts(cross=(cross,))
    control = "union" if "task_embedding" in shapes else "controlnet"
    return Info(base=_base(dims), dims=dims, storage_dtype=_storage_dtype(path), control=control)


def _controlnet_folder(path: Path) -> Info:
    """A diffusers ControlNet folder: its config says the class and the cross-attention width."""
    config = json.loads((path / "config.json").read_text())
    dims = _parts(cross=_widths(config.get("cross_attention_dim")))
    control = "union" if config.get("_class_name") == "ControlNetUnionModel" else "controlnet"
    return Info(base=_base(dims), dims=dims, control=control)


def scale_in_name(name: str) -> int | None:
    """An upscaler's scale as its file name says it, by the field's habit (`4x_NMKD-Siax`,
    `RealESRGAN_x4plus`, `2xLexicaRRDBNet`); None when it says none."""
    found = re.search(r"(?:^|[^0-9a-z])([1-8])x(?![0-9])|x([1-8])(?![0-9])", name.lower())
    return int(found.group(1) or found.group(2)) if found else None


def _tool_folder(kind: str, path: Path) -> Info:
    """A point segmenter's or captioner's folder: for a captioner, a tagger's model.onnx with its
    selected_tags.csv (a WD tagger's folder also holds timm's config.json, which names no model_type), else
    a transformers config.json naming its `model_type`; what it runs as, a worker says when it loads it."""
    if kind == "caption" and (path / "model.onnx").is_file():
        if not (path / "selected_tags.csv").is_file():
            return Info(problem=f"{path.name}: a tagger's model.onnx needs its selected_tags.csv beside it")
        return _onnx_file(path / "model.onnx")
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            return Info(problem=f"{path.name}/config.json is unreadable: {exc}")
        if not isinstance(config, dict) or not config.get("model_type"):
            return Info(problem=f"{path.name}/config.json names no model_type, so transformers cannot load it")
        return Info()
    return Info(problem=f"{path.name} holds no config.json" + (" or model.onnx" if kind == "caption" else ""))


def _onnx_file(path: Path) -> Info:
    """A background model: an ONNX file (a protobuf ModelProto, whose first field is its ir_version);
    what its inputs are, onnxruntime says when it is loaded (`models add`, a worker)."""
    try:
        with path.open("rb") as file:
            head = file.read(2)
    except OSError as exc:
        return Info(problem=f"unreadable {path.suffix} file: {exc}")
    if len(head) < 2 or head[0] != 0x08:
        return Info(problem=f"{path.name} is not an ONNX model")
    return Info()

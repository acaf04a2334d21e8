"""What a model file is, read from its tensor shapes without torch and without running any pickle code.

safetensors: the JSON header. `.pt`/`.bin`: the pickle inside the zip, read by an unpickler that only
knows the few names a tensor checkpoint uses and builds shape placeholders instead of tensors.

The widths that decide compatibility: the UNet's cross-attention width (2048 for SDXL, 768 for SD1,
1024 for SD2) and the two text encoders' widths (768 and 1280 for SDXL).
"""

from __future__ import annotations

import collections
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Info", "compatible", "inspect"]

_BASES = {2048: "SDXL", 768: "SD1", 1024: "SD2"}

#: tensor name → shape
Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Info:
    #: "SDXL", "SD1", "SD2" or "custom (cross-attention N)"; "unknown" when the shapes say nothing
    base: str = "unknown"
    #: cross (UNet cross-attention width), te1/te2 (text encoder widths), contexts (hypernetwork)
    dims: dict[str, Any] = field(default_factory=dict)
    trigger_words: tuple[str, ...] = ()
    #: why the file cannot be used at all (unreadable, not a model of its kind)
    problem: str | None = None


def compatible(main: Info, sub: Info, kind: str) -> bool:
    """Whether a LoRA, embedding or hypernetwork fits a main model, by widths (unknown widths pass)."""
    if sub.problem:
        return False
    if kind == "hypernetwork":
        contexts = sub.dims.get("contexts")
        return contexts is None or main.dims.get("cross") is None or main.dims["cross"] in contexts
    keys = ("te1", "te2") if kind == "embedding" else ("cross", "te1", "te2")
    return all(sub.dims.get(k) is None or main.dims.get(k) is None or sub.dims[k] == main.dims[k] for k in keys)


def inspect(kind: str, path: Path) -> Info:
    """What the file (or diffusers folder) at `path`, a model of `kind`, is; never raises for a bad file."""
    try:
        if path.is_dir():
            return _diffusers_folder(path)
        shapes, metadata = _read(path)
    except (
        OSError,
        ValueError,
        struct.error,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        KeyError,
        EOFError,
        StopIteration,
    ) as exc:
        return Info(problem=f"unreadable {path.suffix} file: {exc}")
    dims_of = {"main": _main_dims, "lora": _lora_dims, "embedding": _embedding_dims, "hypernetwork": _hypernetwork_dims}
    dims = dims_of[kind](shapes)
    return Info(base=_base(dims), dims=dims, trigger_words=_trigger_words(metadata) if kind == "lora" else ())


def _base(dims: dict[str, Any]) -> str:
    cross = dims.get("cross")
    if cross is None and "contexts" in dims:
        cross = 2048 if 2048 in dims["contexts"] else (dims["contexts"] or [None])[0]
    if cross is None and dims.get("te2") is not None:
        cross = dims.get("te1", 0) + dims["te2"]
    if cross is None and dims.get("te1") is not None:
        cross = dims["te1"]
    if cross is None:
        return "unknown"
    return _BASES.get(cross) or f"custom (cross-attention {cross})"


# --- reading shapes ---------------------------------------------------------------------------
def _read(path: Path) -> tuple[Shapes, dict[str, str]]:
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
        metadata = header.pop("__metadata__", {}) or {}
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


def _main_dims(shapes: Shapes) -> dict[str, Any]:
    return {
        "cross": _first(shapes, r"attn2\.to_k\.weight$", 1),
        "te1": _first(shapes, r"embedders\.0\.transformer\.text_model\.embeddings\.token_embedding\.weight$", 1)
        or _first(shapes, r"cond_stage_model\.transformer\.text_model\.embeddings\.token_embedding\.weight$", 1),
        "te2": _first(shapes, r"embedders\.1\.model\.token_embedding\.weight$", 1),
    }


def _lora_dims(shapes: Shapes) -> dict[str, Any]:
    # kohya: lora_unet_…attn2_to_k.lora_down.weight; diffusers/PEFT: unet.….attn2.to_k.lora_A.weight
    down = r"(lora_down|lora_A|lora\.down)\.weight$"
    return {
        "cross": _first(shapes, r"attn2[._]to_k[._].*" + down, -1),
        "te1": _first(shapes, r"(lora_te1_|^text_encoder\.|lora_te_).*q_proj[._].*" + down, -1),
        "te2": _first(shapes, r"(lora_te2_|^text_encoder_2\.).*q_proj[._].*" + down, -1),
    }


def _embedding_dims(shapes: Shapes) -> dict[str, Any]:
    if "clip_l" in shapes or "clip_g" in shapes:
        return {"te1": (shapes.get("clip_l") or (None, None))[-1], "te2": (shapes.get("clip_g") or (None, None))[-1]}
    width = _first(shapes, r"(string_to_param\.\*|emb_params)$", -1)  # SD1/SD2 embeddings
    return {"te1": width, "te2": None, "cross": width}


def _hypernetwork_dims(shapes: Shapes) -> dict[str, Any]:
    contexts = sorted({int(k.split(".")[0]) for k in shapes if k.split(".")[0].isdigit()})
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

    dims = {
        "cross": config("unet").get("cross_attention_dim"),
        "te1": config("text_encoder").get("hidden_size"),
        "te2": config("text_encoder_2").get("hidden_size"),
    }
    return Info(base=_base(dims), dims=dims)

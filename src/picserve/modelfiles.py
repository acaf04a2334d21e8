"""`picserve models add` and `models info`: what a downloaded model file is, and filing it in the models folder.

A file is checked before anything else is read from it:

    safetensors   the 8-byte length, a JSON header, every tensor's dtype × shape = its byte range, and the
                  ranges laid end to end to the file's last byte (a truncated download is refused)
    .pt/.ckpt/.bin  a torch zip whose pickles name only what modelinfo's shape reader allows: every global
                  is listed by reading the pickle's opcodes, never by running it

Then its tensor names say its kind, and modelinfo's widths its base model:

    main          model.diffusion_model.… (+ conditioner.embedders.1.… for SDXL)      → main/
    lora          kohya lora_down/lora_up, PEFT lora_A/lora_B, LyCORIS LoHa, LoKr,     → lora/
                  LoCon (3×3 conv lora_down), full diff, DoRA, OFT
    embedding     clip_l/clip_g (SDXL), emb_params or string_to_param (SD1/SD2)        → embedding/
    hypernetwork  int width keys (A1111)                                               → hypernetwork/
    vae           encoder./decoder./quant_conv./post_quant_conv. keys only             → vae/
    controlnet    controlnet_cond_embedding.… (diffusers) or input_hint_block.… (original);  → controlnet/
                  task_embedding: a ControlNet-Union
    ipadapter     image_proj.… and ip_adapter.<n>.to_k_ip… (h94's IP-Adapter files)       → ipadapter/

An image tool's file (an upscaler, an eraser such as LaMa, an ONNX segmentation model) says what it is
only when loaded: `add` and the CLI's `models info` take an `identify` function for that
(engine/toolfiles.identify, which loads it with spandrel or onnxruntime) and file it as `upscale/`,
`inpaint/` or `background/`, its architecture (and an upscaler's scale) or its rembg session written in
its sidecar.

No torch here: the API process imports none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickletools
import re
import struct
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from picserve import catalog, download, errors, ipadapter_info, modelinfo

__all__ = [
    "KINDS",
    "SIDECAR_MODE",
    "Added",
    "Inspection",
    "add",
    "describe",
    "identified",
    "inspect_file",
    "source_label",
    "summary",
    "unfit",
]

#: the kinds a file can be filed as; each is its folder's name
KINDS = catalog.KINDS
#: a sidecar's mode: readable by a service running as another user of the group (or any user)
SIDECAR_MODE = 0o644
_PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
_BASES = {2048: "SDXL", 768: "SD1", 1024: "SD2"}  # UNet cross-attention width → family, as in modelinfo
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: torch storage class → safetensors dtype name, for a pickle's dtypes
_STORAGES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}  # fmt: skip
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class Inspection:
    """What a model file is, read from its header (or pickle opcodes) and tensor shapes."""

    path: Path
    size: int
    #: "safetensors", "pickle" (a torch zip), "onnx" or "unknown"
    format: str
    #: the guessed kind (one of KINDS), None when the tensor names match none
    kind: str | None = None
    #: "SDXL", "SD1", "SD2", "custom (cross-attention N)" or "unknown" (see modelinfo.Info.base)
    base: str = "unknown"
    tensors: int = 0
    #: storage dtypes, safetensors names (F16, BF16, F32, …)
    dtypes: tuple[str, ...] = ()
    #: LoRA: "kohya", "peft", "diffusers", "LyCORIS LoHa", "LyCORIS LoKr", "LyCORIS LoCon", …
    layout: tuple[str, ...] = ()
    #: LoRA: the ranks its layers have, where the shapes tell
    ranks: tuple[int, ...] = ()
    #: main: a `v_pred` key marks a v-prediction model
    v_prediction: bool = False
    trigger_words: tuple[str, ...] = ()
    #: per kind: main inpainting / text_encoder_layers, embedding vectors, vae latent_channels, …
    details: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    #: why the file is refused whatever its kind (unreadable, truncated, a pickle that needs code)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        for key in ("dtypes", "layout", "ranks", "trigger_words"):
            out[key] = list(out[key])
        return out


@dataclass(frozen=True)
class Added:
    kind: str
    code: str
    #: the model file filed, and its sidecar
    path: Path
    sidecar: Path
    inspection: Inspection
    #: what the user should know but did not stop the filing (a sub-model no SDXL model fits, …)
    warnings: tuple[str, ...] = ()


class _Refused(Exception):
    """A file that cannot be read as a model file; its message is one line."""


# --- inspection --------------------------------------------------------------------------------
def inspect_file(path: Path, sha256: str | None = None) -> Inspection:
    """Inspect a model file; never raises for a bad file (its `problem` says what is wrong).

    `sha256`, when the caller already has it, saves a read of the file; else it is computed.
    """
    path = Path(path)
    if path.is_dir():
        return Inspection(path, 0, "unknown", problem="a folder, not a model file")
    try:
        size = path.stat().st_size
        digest = sha256 or download.sha256_of(path)
        with open(path, "rb") as f:
            magic = f.read(9)
    except OSError as exc:
        return Inspection(path, 0, "unknown", problem=f"unreadable: {exc.strerror or exc}")
    try:
        if len(magic) >= 9 and magic[8:9] == b"{":
            return _inspect_safetensors(path, size, digest)
        if magic[:1] == b"\x08":  # an ONNX file: a protobuf ModelProto, its ir_version first
            return Inspection(path, size, "onnx", sha256=digest)
        return _inspect_pickle(path, size, digest, magic)
    except _Refused as exc:
        fmt = "safetensors" if magic[8:9] == b"{" else "pickle" if magic[:2] in (b"PK", b"\x80\x02") else "unknown"
        return Inspection(path, size, fmt, sha256=digest, problem=str(exc))


def unfit(inspection: Inspection, kind: str | None) -> str | None:
    """Why `models add` would not file this file as `kind` (None: the guessed kind), or None when it would."""
    if inspection.problem:
        return inspection.problem
    kind = kind or inspection.kind
    if kind is None:
        return (
            "its tensor names are none of a main model, LoRA, embedding, hypernetwork or VAE, and it is no "
            "upscaler, eraser or segmentation model (pass --kind)"
        )
    suffix = _suffix_for(inspection, kind)
    if suffix is None:
        return (
            f"picserve reads a {kind} from {' or '.join(catalog.SUFFIXES[kind])} only and this is a torch pickle: "
            "convert it to .safetensors"
        )
    if kind == "main" and inspection.base in ("SD1", "SD2"):
        return f"it is an {inspection.base} checkpoint: picserve runs SDXL main models only"
    if kind == "vae" and inspection.details.get("latent_channels") not in (None, 4):
        channels = inspection.details["latent_channels"]
        return f"it is a VAE for {channels}-channel latents (SD3/Flux), SDXL's has 4"
    return None


def _inspect_safetensors(path: Path, size: int, digest: str) -> Inspection:
    header, metadata = _verified_header(path, size)
    shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
    dtypes = tuple(sorted({str(entry["dtype"]) for entry in header.values()}))
    with _with_suffix(path, ".safetensors") as readable:
        return _classified(readable, path, size, "safetensors", shapes, metadata, dtypes, digest)


def _inspect_pickle(path: Path, size: int, digest: str, magic: bytes) -> Inspection:
    if magic[:4] != b"PK\x03\x04":
        if magic[:1] != b"\x80":  # a pickle of protocol 2 or later starts with PROTO
            raise _Refused(f"neither a safetensors file nor a torch file (it starts with {magic[:8]!r})")
        with open(path, "rb") as f:
            names = _globals_of(f, pickles=5)  # the legacy torch layout: magic, protocol, sys info, object, keys
        _refuse_code(names)
        raise _Refused(
            "not a safetensors file nor a torch zip (a legacy torch pickle?): re-save it with a current torch "
            "or convert it to .safetensors"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = []
            for member in archive.namelist():
                if member.endswith(".pkl"):
                    with archive.open(member) as f:
                        names += _globals_of(f, pickles=1)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _Refused(f"a damaged zip archive: {exc}") from None
    _refuse_code(names)
    with _with_suffix(path, ".pt") as readable:
        try:
            shapes, metadata = modelinfo.read_shapes(readable)
        except modelinfo.UNREADABLE as exc:
            raise _Refused(f"an unreadable torch file: {exc}") from None
        dtypes = tuple(sorted({_STORAGES[n] for _, n in filter(None, names) if n in _STORAGES}))
        return _classified(readable, path, size, "pickle", shapes, metadata, dtypes, digest)


def _classified(
    readable: Path,
    path: Path,
    size: int,
    fmt: str,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str],
    dtypes: tuple[str, ...],
    digest: str,
) -> Inspection:
    names = _unwrapped(shapes)
    kind = _kind_of(names)
    common: dict[str, Any] = {
        "path": path,
        "size": size,
        "format": fmt,
        "tensors": len(shapes),
        "dtypes": dtypes,
        "sha256": digest,
    }
    if kind == "main":
        info = modelinfo.inspect("main", readable)
        details = {"inpainting": info.unet_in_channels == 9, "text_encoder_layers": info.text_encoder_layers}
        return Inspection(**common, kind=kind, base=info.base, v_prediction="v_pred" in names, details=details)
    if kind == "lora":
        base = modelinfo.inspect("lora", readable).base
        words = modelinfo.trigger_words(metadata)
        layout, ranks = _lora_layout(names)
        return Inspection(**common, kind=kind, base=base, layout=layout, ranks=ranks, trigger_words=words)
    if kind == "embedding":
        vectors = next((s[0] for n, s in names.items() if len(s) == 2), 1)
        base = modelinfo.inspect("embedding", readable).base
        return Inspection(**common, kind=kind, base=base, details={"vectors": vectors})
    if kind == "hypernetwork":
        widths = sorted({int(n.split(".")[0]) for n in names})
        base = modelinfo.inspect("hypernetwork", readable).base
        return Inspection(**common, kind=kind, base=base, details={"context_widths": widths})
    if kind == "controlnet":
        info = modelinfo.inspect("controlnet", readable)
        control: dict[str, Any] = {"type": "ControlNet-Union" if info.control == "union" else "ControlNet"}
        if info.problem:
            control["problem"] = info.problem
        return Inspection(**common, kind=kind, base=info.base, details=control)
    if kind == "ipadapter":
        facts = ipadapter_info.inspect(names)
        adapter: dict[str, Any] = {"type": facts.kind, "encoder": facts.encoder, "tokens": facts.tokens}
        if facts.problem:
            adapter["problem"] = facts.problem
        return Inspection(**common, kind=kind, base=modelinfo.base_of_cross(facts.cross_attention), details=adapter)
    if kind == "vae":  # SDXL's and SD1's VAEs have the same shapes: the base cannot be told
        channels = next((s[1] for n, s in names.items() if n == "decoder.conv_in.weight" and len(s) > 1), None)
        return Inspection(**common, kind=kind, details={"latent_channels": channels})
    return Inspection(**common, details={"first_tensors": sorted(names)[:5]})


def _unwrapped(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Without a `state_dict.` prefix every name has (a training checkpoint's wrapping)."""
    if shapes and all(n.startswith("state_dict.") for n in shapes):
        return {n.removeprefix("state_dict."): s for n, s in shapes.items()}
    return shapes


_LORA_KEY = re.compile(
    r"[._](lora_down|lora_up|lora_A|lora_B|lora\.(down|up)|lora_linear_layer\.(down|up)|lora_magnitude_vector"
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](_[ab])?|lokr_t2|diff|diff_b|dora_scale|oft_blocks|oft_diag)"
    r"(\.weight)?$"
)
_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def _kind_of(names: dict[str, tuple[int, ...]]) -> str | None:
    if any(n.startswith("model.diffusion_model.") for n in names):
        return "main"
    if any(
        n.startswith(("controlnet_cond_embedding.", "input_hint_block.", "control_model.input_hint_block."))
        for n in names
    ):
        return "controlnet"
    if any(n.startswith("image_proj.") for n in names) and any(n.startswith("ip_adapter.") for n in names):
        return "ipadapter"
    if any(_LORA_KEY.search(n) for n in names):
        return "lora"
    if {"clip_l", "clip_g", "emb_params"} & names.keys() or any(n.startswith("string_to_param.") for n in names):
        return "embedding"
    if names and all(n.startswith(_VAE_PREFIXES) for n in names) and any(n.startswith("decoder.") for n in names):
        return "vae"
    if names and all(n.split(".")[0].isdigit() for n in names):
        return "hypernetwork"
    return None


def _lora_layout(names: dict[str, tuple[int, ...]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The layouts and LyCORIS algorithms a LoRA's names show, and the ranks its shapes tell."""
    found: dict[str, None] = {}  # ordered set
    ranks: set[int] = set()
    for name, shape in names.items():
        if re.search(r"[._]lora_down\.weight$", name):
            found["kohya" if name.startswith(("lora_unet_", "lora_te")) else "lora_down"] = None
            if len(shape) == 4 and tuple(shape[2:]) != (1, 1):
                found["LyCORIS LoCon"] = None
        elif re.search(r"[._]lora_[AB]\.weight$", name):
            found["peft"] = None
        elif re.search(r"[._](lora\.(down|up)|lora_linear_layer\.(down|up))\.weight$", name):
            found["diffusers"] = None
        elif re.search(r"[._]hada_", name):
            found["LyCORIS LoHa"] = None
        elif re.search(r"[._]lokr_", name):
            found["LyCORIS LoKr"] = None
        elif re.search(r"[._]diff(_b)?$", name):
            found["LyCORIS full"] = None
        elif re.search(r"[._]oft_(blocks|diag)$", name):
            found["LyCORIS OFT"] = None
        if re.search(r"[._](dora_scale|lora_magnitude_vector)", name):
            found["DoRA"] = None
        if re.search(r"[._](lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$", name) and shape:
            ranks.add(shape[0])
        elif re.search(r"[._](hada_w[12]_b|lokr_w[12]_b)(\.weight)?$", name) and shape:
            ranks.add(shape[0])
    return tuple(found), tuple(sorted(ranks))


def _verified_header(path: Path, size: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The safetensors header (name → dtype/shape/data_offsets) and metadata, once every range is checked."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _MAX_HEADER or 8 + length > size:
            raise _Refused(f"a safetensors header of {length} bytes in a file of {size}: truncated or not safetensors")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise _Refused(f"the safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _Refused("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _Refused("the safetensors __metadata__ is not a JSON object")
    data_size, ranges = size - 8 - length, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)):
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise _Refused(f"tensor {name!r}: its header entry is not dtype/shape/data_offsets") from None
        if end > data_size:
            raise _Refused(f"truncated: tensor {name!r} ends at data byte {end}, the file holds {data_size}")
        if dtype in _DTYPE_BYTES and end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise _Refused(f"tensor {name!r}: {end - begin} bytes for a {dtype} tensor of shape {list(shape)}")
        ranges.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(ranges):
        if begin != at or end < begin:
            raise _Refused(
                f"tensor {name!r}: its data does not follow the previous tensor's (offset {begin}, not {at})"
            )
        at = end
    if at != data_size:
        raise _Refused(f"{data_size - at} bytes after the last tensor: not a safetensors file as written")
    return header, {str(k): str(v) for k, v in metadata.items()}


# --- pickles, read as opcodes -------------------------------------------------------------------
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _globals_of(f: IO[bytes], pickles: int) -> list[tuple[str, str] | None]:
    """Every global the first `pickles` pickles in `f` name, read from their opcodes without running them.

    A STACK_GLOBAL's names are followed through the stack and the memo; None stands for one whose name
    is computed (or an extension code), which no tensor file needs.
    """
    found: list[tuple[str, str] | None] = []
    for index in range(pickles):
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        try:
            for op, raw, _pos in pickletools.genops(f):
                arg: Any = raw
                if op.name in _STRING_OPS:
                    stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif op.name in ("GLOBAL", "INST"):
                    module, _, name = str(arg).partition(" ")
                    found.append((module, name))
                    if op.name == "INST":
                        del stack[marks.pop() if marks else 0 :]
                    stack.append(None)
                elif op.name == "STACK_GLOBAL":
                    attr, owner = (stack.pop() if stack else None), (stack.pop() if stack else None)
                    found.append((owner, attr) if isinstance(owner, str) and isinstance(attr, str) else None)
                    stack.append(None)
                elif op.name in ("EXT1", "EXT2", "EXT4"):
                    found.append(None)
                    stack.append(None)
                elif op.name == "MARK":
                    marks.append(len(stack))
                else:
                    before = op.stack_before
                    if pickletools.markobject in before:
                        below = before.index(pickletools.markobject)
                        del stack[marks.pop() if marks else 0 :]
                        del stack[len(stack) - below :]
                    elif before:
                        del stack[max(0, len(stack) - len(before)) :]
                    stack.extend([None] * len(op.stack_after))
        except ValueError as exc:  # not a pickle, or cut short: what follows is no pickle to scan
            if index == 0:
                raise _Refused(f"not a readable pickle: {exc}") from None
            break
    return found


def _refuse_code(names: list[tuple[str, str] | None]) -> None:
    bad = sorted({"a computed name" if n is None else f"{n[0]}.{n[1]}" for n in names if n is None or not _allowed(n)})
    if bad:
        raise _Refused(
            f"its pickle names {', '.join(bad)}, which a tensor file never needs: loading it could run code "
            "(nothing was run); get a .safetensors version"
        )


def _allowed(name: tuple[str, str]) -> bool:
    return modelinfo.allowed_global(*name)


@contextlib.contextmanager
def _with_suffix(path: Path, suffix: str) -> Iterator[Path]:
    """`path` itself when it ends with `suffix`, else a link to it that does: modelinfo picks the reader by suffix."""
    if path.suffix == suffix:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="picserve-inspect-") as folder:
        link = Path(folder) / f"file{suffix}"
        os.symlink(path.resolve(), link)
        yield link


def identified(
    inspection: Inspection, identify: Callable[[Path], modelinfo.ToolFacts] | None, filename: str
) -> Inspection:
    """`inspection`, with what `identify` (engine/toolfiles.identify) finds when it may be an image tool's
    model: a file of no SDXL kind that passed the checks (`filename`: its own name, whose suffix the
    loaders go by and which may name its family). Its refusal becomes the problem."""
    if identify is None or inspection.problem or inspection.kind is not None:
        return inspection
    own = Path(filename)
    with _with_suffix(inspection.path, own.suffix.lower() or ".pth") as readable:
        facts = identify(readable)
    details = {**inspection.details, **facts.details}
    if facts.kind is None:
        problem = facts.problem
        if inspection.format != "onnx":  # it may still be a model of an SDXL kind that is not recognised
            problem = (
                "its tensor names are none of a main model, LoRA, embedding, hypernetwork or VAE, and "
                f"{problem} (pass --kind)"
            )
        return replace(inspection, details=details, problem=problem)
    sidecar = dict(facts.sidecar)
    if facts.kind == "background" and (named := catalog.session_in_name(own.stem)):
        sidecar["Session"] = named  # the file's name says its family better than its input size
    return replace(inspection, kind=facts.kind, details={**details, "sidecar": sidecar})


def _suffix_for(inspection: Inspection, kind: str) -> str | None:
    """The suffix a file is filed with: .safetensors, or its own pickle suffix; None when the kind takes no pickle."""
    if inspection.format == "onnx":
        return ".onnx" if ".onnx" in catalog.SUFFIXES[kind] else None
    if inspection.format == "safetensors":
        return ".safetensors" if ".safetensors" in catalog.SUFFIXES[kind] else None
    own = inspection.path.suffix.lower()
    for suffix in (own, ".pt", ".bin"):
        if suffix in catalog.SUFFIXES[kind] and suffix in _PICKLE_SUFFIXES:
            return suffix
    return None


# --- filing --------------------------------------------------------------------------------------
def add(
    source: str,
    models_dir: Path,
    *,
    sha256: str | None = None,
    name: str | None = None,
    kind: str | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    identify: Callable[[Path], modelinfo.ToolFacts] | None = None,
    headers: Mapping[str, str] | None = None,
    on_progress: download.OnProgress | None = None,
    max_bytes: int | None = None,
) -> Added:
    """Fetch a model file (http(s) URL or local path), check it, and file it as `<models_dir>/<kind>/<code><suffix>`
    with a sidecar `<code>.json` (Source, Sha256, TriggerWordList; keys already there are kept).

    `identify` (engine/toolfiles.identify) tells an upscaler, an eraser or a segmentation model by loading it;
    without it, only SDXL's kinds are recognised. `headers` (a source's token), `on_progress` and
    `max_bytes` (a larger file is refused, its partial download removed) go to the download (download.fetch).

    Raises errors.PullError with a one-line message for every refusal; nothing is left in the models
    folder then, but the `.part` of a download the network interrupted (the next run resumes it).

    Example
    -------
    >>> add("https://example.com/style.safetensors", Path("models"), sha256="ab…")  # doctest: +SKIP
    """
    models_dir = Path(models_dir)
    expected = _checked_options(sha256, name, kind)
    if name and kind:  # a refusal known before a download of gigabytes
        _check_free(models_dir, kind, name, None, force)
    staging = models_dir / ".downloads"
    url = download.is_url(source)
    if not url and "://" in source:
        raise errors.PullError(f"{source}: only http(s) URLs and local paths can be added")
    if url:
        fetched = download.fetch(
            source,
            staging,
            retries=retries,
            progress=progress,
            headers=headers,
            on_progress=on_progress,
            max_bytes=max_bytes,
        )
    else:
        fetched = download.copy_local(Path(source).expanduser(), staging)
    try:
        if expected and fetched.sha256 != expected:
            raise errors.PullError(f"sha256 mismatch: expected {expected}, the file has {fetched.sha256}; not filed")
        inspection = inspect_file(fetched.path, fetched.sha256)
        if kind is None or kind in catalog.TOOL_KINDS:  # an image tool's model says what it is when loaded
            inspection = identified(inspection, identify, fetched.filename)
        named = _with_name(inspection, fetched.filename)
        chosen = kind or inspection.kind
        if reason := unfit(named, chosen):
            raise errors.PullError(f"refused: {reason}")
        assert chosen is not None  # unfit says why when there is no kind
        code = name or _code_from(fetched.filename)
        suffix = _suffix_for(named, chosen)
        assert suffix is not None
        warnings = _check_free(models_dir, chosen, code, suffix, force)
        if reason := _will_not_load(inspection, chosen, models_dir / chosen / f"{code}.json"):
            if not force:
                raise errors.PullError(f"refused: {reason}; --force files it anyway")
            warnings.append(f"filed as asked (--force), but it WILL NOT LOAD as it is: {reason}")
        warnings += _warnings(inspection, chosen)
        target, sidecar = _file(fetched.path, models_dir, chosen, code, suffix, inspection, source_label(source), force)
    finally:
        download.discard(fetched)  # filed, or refused: nothing half-written stays (a no-op once filed)
    return Added(chosen, code, target, sidecar, replace(inspection, path=target), tuple(warnings))


def _checked_options(sha256: str | None, name: str | None, kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise errors.PullError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    if name is not None and not catalog.is_plain_code(name):
        raise errors.PullError(f"--name {name!r}: a plain file name (no / or \\, not starting with '.', ≤ 255 chars)")
    if sha256 is None:
        return None
    expected = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise errors.PullError(f"--sha256 {sha256!r}: 64 hexadecimal digits")
    return expected


def _with_name(inspection: Inspection, filename: str) -> Inspection:
    """The inspection as if the file had its own name (a staged `.part` says nothing of its suffix)."""
    return replace(inspection, path=inspection.path.with_name(Path(filename).name or "file"))


def _code_from(filename: str) -> str:
    stem = re.split(r"[/\\]", filename)[-1]
    for suffix in (".safetensors", ".onnx", *_PICKLE_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    code = re.sub(r"[\x00-\x1f]", "_", stem).strip().lstrip(".").strip()[:200]
    if not catalog.is_plain_code(code):
        raise errors.PullError(f"no usable model name in {filename!r}: pass --name")
    return code


def _check_free(models_dir: Path, kind: str, code: str, suffix: str | None, force: bool) -> list[str]:
    """Refuse a code already used by a model of `kind` (unless `force`); warn of a sub-model of another kind."""
    folder = models_dir / kind
    taken = [folder / f"{code}{s}" for s in catalog.SUFFIXES[kind] if (folder / f"{code}{s}").exists()]
    if (folder / code).is_dir():
        raise errors.PullError(f"{folder / code} exists (a diffusers folder): remove it or pick another --name")
    if taken and not force:
        raise errors.PullError(f"{taken[0]} exists: pass --force to replace it, or pick another --name")
    warnings = []
    if kind in ("lora", "embedding", "hypernetwork"):
        for other in ("lora", "embedding", "hypernetwork"):
            suffixes = catalog.SUFFIXES[other] if other != kind else ()
            clash = [p for s in suffixes if (p := models_dir / other / f"{code}{s}").exists()]
            if clash and not force:
                raise errors.PullError(
                    f"{clash[0]} has the same name: a sub-model's code must be unique across lora, embedding and "
                    "hypernetwork (pick another --name, or --force)"
                )
            if clash:
                warnings.append(f"{clash[0]} has the same name: requests naming {code!r} will be ambiguous")
    return warnings


def _warnings(inspection: Inspection, kind: str) -> list[str]:
    warnings = []
    if inspection.kind and inspection.kind != kind:
        warnings.append(f"filed as {kind} as asked, though its tensors look like a {inspection.kind}")
    if kind in ("lora", "embedding", "hypernetwork", "controlnet", "ipadapter") and inspection.base in ("SD1", "SD2"):
        warnings.append(f"an {inspection.base} {kind}: it fits no SDXL main model")
    if kind == "vae":
        warnings.append("SDXL's and SD1's VAEs have the same shapes: make sure it is an SDXL VAE")
    return warnings


def _will_not_load(inspection: Inspection, kind: str, sidecar: Path) -> str | None:
    """Why a file `models add` could file would still fail to load (None: it loads): a main model whose
    widths are not SDXL base's loads only with a Config folder (a diffusers folder of its architecture)
    named in its sidecar."""
    if kind != "main" or not inspection.base.startswith("custom"):
        return None
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta, dict) and meta.get("Config"):
        return None
    return (
        f"its widths are not SDXL base's ({inspection.base}), so it loads only with a Config folder: a diffusers "
        f"folder of its architecture beside it, named in its sidecar ({sidecar.name}: "
        '{"Config": "<folder>"})'
    )


def source_label(source: str) -> str:
    """The source as the sidecar records it: a URL without credentials or token-like query parameters."""
    if not download.is_url(source):
        return str(Path(source).expanduser().resolve())
    parts = urllib.parse.urlsplit(source)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not re.search(r"token|key|sig|auth|secret|password", k, re.IGNORECASE)
    ]
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), ""))


def _file(
    staged: Path, models_dir: Path, kind: str, code: str, suffix: str, inspection: Inspection, source: str, force: bool
) -> tuple[Path, Path]:
    """Move the staged file to `<kind>/<code><suffix>` and write its sidecar; existing sidecar keys are kept,
    except Source and Sha256 when `force` replaces the model they describe."""
    folder = models_dir / kind
    target, sidecar = folder / f"{code}{suffix}", folder / f"{code}.json"
    meta: dict[str, Any] = {}
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise errors.PullError(f"{sidecar} is not readable JSON ({exc}): fix or remove it") from None
        if not isinstance(meta, dict):
            raise errors.PullError(f"{sidecar} is not a JSON object: fix or remove it")
    facts = {"Source": source, "Sha256": inspection.sha256}
    meta.update({k: v for k, v in facts.items() if force or k not in meta})
    if inspection.trigger_words and "TriggerWordList" not in meta:
        meta["TriggerWordList"] = list(inspection.trigger_words)
    if kind in catalog.TOOL_KINDS:  # Architecture (and Scale), or Session: what the catalog lists it by
        found = inspection.details.get("sidecar", {})
        meta.update({k: v for k, v in found.items() if force or k not in meta})
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{code}.", suffix=".json.tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)
                f.write("\n")
            # mkstemp makes it 0600: readable by the service's user and group, like the model file
            os.chmod(temp, SIDECAR_MODE)
            if force:
                for other in catalog.SUFFIXES[kind]:
                    if other != suffix:
                        (folder / f"{code}{other}").unlink(missing_ok=True)
                os.replace(staged, target)
            else:
                _move_no_clobber(staged, target)
            os.replace(temp, sidecar)
        finally:
            Path(temp).unlink(missing_ok=True)
    except FileExistsError:
        raise errors.PullError(f"{target} exists: pass --force to replace it, or pick another --name") from None
    except OSError as exc:
        raise errors.PullError(f"could not file {target}: {exc}") from exc
    return target, sidecar


def _move_no_clobber(staged: Path, target: Path) -> None:
    """Rename, failing with FileExistsError when `target` exists, even one made a moment ago."""
    try:
        os.link(staged, target)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: the check and the rename are not atomic there
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(staged, target)
        return
    staged.unlink()


def summary(added: Added) -> str:
    """What was filed, in one line: `lora my-style: SDXL kohya, sha256 …` (`models add`, ImportModel)."""
    found = added.inspection
    if found.format == "folder":  # modelfolders.add: no one file to hash
        return f"{added.kind} {added.code}: a folder of {found.details.get('files', '?')} files, {found.size:,} bytes"
    layout = f" {'/'.join(found.layout)}" if found.layout else ""
    return f"{added.kind} {added.code}: {found.base}{layout}, sha256 {found.sha256}"


def describe(inspection: Inspection) -> list[tuple[str, str]]:
    """(label, value) lines for a person: what `picserve models info` prints."""
    i = inspection
    lines = [("file", f"{i.path} ({i.size:,} bytes)"), ("kind", i.kind or "unknown")]
    if i.format != "folder":  # a folder's model (modelfolders.inspect) says what it is in its details
        lines.append(("base", i.base))
        lines.append(("format", f"{i.format}, {i.tensors} tensors" + (f", {' '.join(i.dtypes)}" if i.dtypes else "")))
    if i.layout:
        lines.append(("layout", ", ".join(i.layout)))
    if i.ranks:
        lines.append(("rank", ", ".join(map(str, i.ranks))))
    if i.kind == "main":
        lines.append(("prediction", "v-prediction" if i.v_prediction else "epsilon (no v_pred key)"))
    if i.trigger_words:
        lines.append(("trigger words", ", ".join(i.trigger_words)))
    lines += [
        (key.replace("_", " "), str(value))
        for key, value in i.details.items()
        if value is not None and key != "sidecar"
    ]
    if i.sha256:
        lines.append(("sha256", i.sha256))
    if i.problem:
        lines.append(("problem", i.problem))
    return lines

"""The models folder: main checkpoints, LoRAs, embeddings and hypernetworks, as users download them.

    models/main/NAME.safetensors      single-file SDXL checkpoint   ModelCode = NAME
    models/main/NAME/                 diffusers folder (model_index.json inside)
    models/lora/NAME.safetensors      models/embedding/NAME.{safetensors,pt,bin}
    models/hypernetwork/NAME.pt       each may have a sidecar NAME.json
    models/vae/NAME.safetensors       a VAE (original or diffusers layout), or NAME/ a diffusers VAE folder
    models/upscale/NAME.{pth,safetensors,pt,ckpt,bin}   an upscaler spandrel loads (ESRGAN, SwinIR, …)
    models/background/NAME.onnx       a segmentation model rembg runs (BiRefNet, ISNet, U²-Net, …)
    models/inpaint/NAME.{pth,safetensors,pt,ckpt}   an eraser spandrel loads (LaMa): RemoveContents
    models/controlnet/NAME.safetensors   an SDXL ControlNet or ControlNet-Union, or NAME/ a diffusers folder
    models/ipadapter/NAME.safetensors    an SDXL IP-Adapter (h94's .safetensors or .bin), whose CLIP image
    models/image_encoder/NAME/           encoder is a folder here (its sidecar's `ImageEncoder`, else the one
                                         whose widths fit)
    models/faces/NAME.{pth,safetensors,pt,ckpt}   a face restorer spandrel loads (GFPGAN, RestoreFormer,
                                         CodeFormer with spandrel-extra-arches): RestoreFaces
    models/facedetect/NAME.onnx          a face detector OpenCV runs (YuNet): where RestoreFaces looks
    models/segment/NAME/                 a Segment Anything folder transformers loads (SAM, SlimSAM):
                                         ExtractContents
    models/caption/NAME/                 a captioner transformers loads (BLIP, Florence-2, …: config.json) or
                                         a WD-style tagger (model.onnx + selected_tags.csv): DescribeImages

A sidecar gives `Name`, `IsOfficial`, `TriggerWordList`, default `InferenceParams` and, for a single
file whose widths are not SDXL base's, `Config`: the diffusers folder holding its configs. A main model's
sidecar may also name a VAE of models/vae (`Vae`; else the catalog's default VAE, when one is set; `"Vae":
null` keeps the checkpoint's own) and declare v-prediction (`"Prediction": "v"`, `"ZeroTerminalSNR": true`)
for a file that has no `v_pred`/`ztsnr` keys. A VAE is per main model, never a per-request sub-model.
An upscaler's sidecar gives its `Architecture` and `Scale` (`picserve models add` writes them, from
spandrel's detection; without a sidecar the scale is read from the file name, `4x_…` or `…_x2`); a
background model's gives its rembg `Session` (the model family, which decides the input size and
normalisation; without a sidecar, from the file name); an eraser's its `Architecture` (without a
sidecar, LaMa when its file name says `lama`). `Default: true` in a sidecar makes that upscaler,
background model or eraser the one requests that name none get (else PICSERVE_DEFAULT_UPSCALER /
PICSERVE_DEFAULT_BACKGROUND_MODEL, else the only one installed).
No torch here.

A ModelCode is a plain file name (`is_plain_code`): lookups are in the scanned entries only, never a
path built from what a client sent, so `../../etc/passwd` or `/abs` is simply not found.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picserve import ipadapter_info, modelinfo

if TYPE_CHECKING:
    from picserve.config import Settings

__all__ = [
    "CONTROL_KINDS",
    "FOLDER_MARKERS",
    "KINDS",
    "SUB_MODEL_KINDS",
    "SUFFIXES",
    "TOOL_KINDS",
    "Catalog",
    "Entry",
    "is_plain_code",
    "session_in_name",
]

KINDS = (
    "main",
    "lora",
    "embedding",
    "hypernetwork",
    "vae",
    "upscale",
    "background",
    "inpaint",
    "controlnet",
    "ipadapter",
    "faces",
    "facedetect",
    "segment",
    "caption",
)
#: the kinds a ControlNetList unit's ControlModel names: ControlNets (and Unions), IP-Adapters
CONTROL_KINDS = ("controlnet", "ipadapter")
#: the kinds of the image tools' models (not SDXL's): ResizeImage's upscalers, RemoveBackground's models,
#: RemoveContents' erasers, RestoreFaces' restorers and detectors, ExtractContents' point segmenters,
#: DescribeImages' captioners and taggers
TOOL_KINDS = ("upscale", "background", "inpaint", "faces", "facedetect", "segment", "caption")
#: the tool kinds whose models are folders (transformers' save_pretrained layout, or a tagger's two files),
#: by the files that mark one (any of them)
FOLDER_MARKERS = {"segment": ("config.json",), "caption": ("config.json", "model.onnx")}
#: the kinds a request's SubModelList names
SUB_MODEL_KINDS = ("lora", "embedding", "hypernetwork")
#: the file suffixes listed per kind (the first: what `models add` files a new one as)
SUFFIXES = {
    "main": (".safetensors",),
    "lora": (".safetensors",),
    "embedding": (".safetensors", ".pt", ".bin"),
    "hypernetwork": (".pt", ".safetensors"),
    "vae": (".safetensors",),
    "upscale": (".pth", ".safetensors", ".pt", ".ckpt", ".bin"),
    "background": (".onnx",),
    "inpaint": (".pth", ".safetensors", ".pt", ".ckpt"),
    "controlnet": (".safetensors", ".pth", ".bin"),
    "ipadapter": (".safetensors", ".bin"),
    "faces": (".pth", ".safetensors", ".pt", ".ckpt"),
    "facedetect": (".onnx",),
    "segment": (),
    "caption": (),
}

#: the kinds whose models may be folders, by the files that mark one: diffusers folders, and the tools'
_DIRECTORY_MARKERS = {
    "main": ("model_index.json",),
    "vae": ("config.json",),
    "controlnet": ("config.json",),
    **FOLDER_MARKERS,
}
#: (kind, path, mtime_ns, size): one version of one file
_FileVersion = tuple[str, str, int, int]
#: characters no ModelCode holds: path separators (either OS's) and NUL
_NOT_IN_CODES = frozenset("/\\\x00")


def is_plain_code(code: str) -> bool:
    """Whether `code` can name a model: a file name of at most 255 characters, not hidden, no separators."""
    return 0 < len(code) <= 255 and not code.startswith(".") and _NOT_IN_CODES.isdisjoint(code)


@dataclass(frozen=True)
class Entry:
    kind: str
    code: str
    path: Path
    name: str
    is_official: bool = False
    trigger_words: tuple[str, ...] = ()
    inference_params: dict[str, Any] = field(default_factory=dict)
    #: diffusers config folder for a single-file checkpoint (None = SDXL base)
    config: Path | None = None
    #: what the file's tensor shapes say: base model family and widths (see modelinfo)
    info: modelinfo.Info = field(default_factory=modelinfo.Info)
    #: main models: the code of the VAE in models/vae it decodes with (None: the checkpoint's own)
    vae: str | None = None
    #: main models: "v" (v-prediction) or "epsilon": the sidecar's `Prediction`, else what the file says
    prediction: str = "epsilon"
    #: main models: trained with zero terminal SNR (sidecar `ZeroTerminalSNR`, else the file's `ztsnr` key)
    zero_terminal_snr: bool = False
    #: VAEs: whether an fp16 worker decodes with it in fp32 (its sidecar's `ForceUpcast`, diffusers' name;
    #: false for an "fp16-fix" VAE). None: its own config says (a folder), or the main model's (a single file)
    force_upcast: bool | None = None
    #: upscalers: the architecture (sidecar `Architecture`, as spandrel names it) and the native scale
    #: (sidecar `Scale`, else the file name's `4x`/`x4`); None: not known until a worker loads it
    architecture: str | None = None
    scale: int | None = None
    #: background models: the rembg session family (`u2net`, `isnet-general-use`, `birefnet-general`, …)
    session: str | None = None
    #: upscalers and background models: the sidecar's `Default: true`
    is_default: bool = False
    #: control models: the preprocessor that makes their control map (sidecar `PreProcessor`, else the file
    #: name's: `…canny…` → canny); None: not known (a ControlNet-Union takes any)
    preprocessor: str | None = None
    #: IP-Adapters: the CLIP image encoder folder they read images with (models/image_encoder/NAME)
    image_encoder: Path | None = None

    @property
    def is_single_file(self) -> bool:
        return self.path.is_file()


class Catalog:
    """Scans the models folder; rescans at most every `ttl` seconds so new files appear without restart.

    `ttl` 0 rescans on every lookup. `default_vae`: the VAE code of main models whose sidecar names none.
    """

    def __init__(self, models_dir: Path, ttl: float = 2.0, default_vae: str | None = None) -> None:
        self.models_dir = Path(models_dir)
        self._ttl = ttl
        self.default_vae = default_vae or None
        self._lock = threading.Lock()
        self._scanned_at = float("-inf")
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}  # kind → code → entry
        self._infos: dict[_FileVersion, modelinfo.Info] = {}  # files are read once per version
        self._adapters: dict[_FileVersion, ipadapter_info.Info] = {}  # IP-Adapters' own facts, likewise
        self._seen: set[_FileVersion] = set()  # the file versions met by the scan under way

    @classmethod
    def of(cls, settings: Settings, ttl: float | None = None) -> Catalog:
        """The catalog of `settings`' models folder, with its default VAE; `ttl`: the rescan interval
        (default: settings.catalog_rescan_seconds)."""
        rescan = settings.catalog_rescan_seconds if ttl is None else ttl
        return cls(settings.models_dir, ttl=rescan, default_vae=settings.default_vae)

    def entries(self, kind: str) -> dict[str, Entry]:
        """Model code → entry, for one of KINDS."""
        with self._lock:
            if time.monotonic() - self._scanned_at > self._ttl:
                self._seen = set()
                self._entries = {k: self._scan(k) for k in KINDS}
                self._infos = {key: info for key, info in self._infos.items() if key in self._seen}
                self._adapters = {key: facts for key, facts in self._adapters.items() if key in self._seen}
                self._scanned_at = time.monotonic()
            return self._entries[kind]

    def get(self, kind: str, code: str) -> Entry | None:
        """The entry named `code`; None for an unknown code (and, without a scan, for one that is no plain name)."""
        if not is_plain_code(code):
            return None
        return self.entries(kind).get(code)

    def find_sub_model(self, code: str) -> list[Entry]:
        """Every LoRA, embedding or hypernetwork named `code` (more than one means the name is ambiguous)."""
        return [e for kind in SUB_MODEL_KINDS if (e := self.get(kind, code)) is not None]

    def compatible_mains(self, entry: Entry) -> list[str]:
        """The codes of the main models a sub-model fits, by tensor widths (see modelinfo.compatible)."""
        return [
            code
            for code, main in self.entries("main").items()
            if modelinfo.compatible(main.info, entry.info, entry.kind)
        ]

    def _scan(self, kind: str) -> dict[str, Entry]:
        folder = self.models_dir / kind
        if not folder.is_dir():
            return {}
        found: dict[str, Entry] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                if not any((path / marker).exists() for marker in _DIRECTORY_MARKERS.get(kind, ())):
                    continue
                code = path.name
            elif path.suffix.lower() in SUFFIXES[kind]:
                code = path.stem
            else:
                continue
            if is_plain_code(code):  # the same rule as lookups: what is listed can be asked for
                found.setdefault(code, self._entry(kind, code, path))
        return found

    def _entry(self, kind: str, code: str, path: Path) -> Entry:
        sidecar = path.parent / f"{code}.json"
        meta: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                meta = {}
        config = meta.get("Config")
        info = self._inspect(kind, path if not config else path.parent / config)
        encoder = None
        if kind == "ipadapter":
            encoder, problem = _image_encoder(self._adapter_facts(path), self.models_dir, meta.get("ImageEncoder"))
            info = dataclasses.replace(info, problem=info.problem or problem)
        if kind == "main" and config and path.is_file():  # what only the file itself says
            own = self._inspect(kind, path)
            info = dataclasses.replace(
                info,
                prediction=own.prediction or info.prediction,
                zero_terminal_snr=own.zero_terminal_snr or info.zero_terminal_snr,
                storage_dtype=own.storage_dtype,
            )
        words = meta.get("TriggerWordList")
        return Entry(
            kind=kind,
            code=code,
            path=path,
            name=str(meta.get("Name") or code),
            is_official=bool(meta.get("IsOfficial", False)),
            trigger_words=tuple(str(w) for w in words) if words is not None else info.trigger_words,
            inference_params=dict(meta.get("InferenceParams") or {}),
            config=(path.parent / config) if config else None,
            info=info,
            **(self._main_fields(meta, info) if kind == "main" else {}),
            force_upcast=bool(meta["ForceUpcast"]) if kind == "vae" and "ForceUpcast" in meta else None,
            **(_tool_fields(kind, code, meta, info) if kind in TOOL_KINDS else {}),
            preprocessor=_preprocessor_of(code, meta, info) if kind == "controlnet" else None,
            image_encoder=encoder,
            is_default=bool(meta.get("Default", False)),
        )

    def _main_fields(self, meta: dict[str, Any], info: modelinfo.Info) -> dict[str, Any]:
        """A main model's VAE and prediction type: its sidecar's word, else what its file says."""
        vae = (str(meta["Vae"] or "") or None) if "Vae" in meta else self.default_vae
        prediction = str(meta.get("Prediction") or info.prediction or "epsilon").lower()
        return {
            "vae": vae,
            "prediction": "v" if prediction in ("v", "v_prediction") else "epsilon",
            "zero_terminal_snr": bool(meta.get("ZeroTerminalSNR", info.zero_terminal_snr)),
        }

    def default_tool(self, kind: str, setting: str | None) -> Entry | None:
        """The upscaler or background model (`kind`) of a request that names none: the one whose sidecar
        says `Default: true`, else the setting's (`setting`), else the only one installed, else None."""
        entries = {code: e for code, e in self.entries(kind).items() if e.info.problem is None}
        marked = [e for e in entries.values() if e.is_default]
        if marked:
            return marked[0]
        if setting:
            return self.get(kind, setting)
        return next(iter(entries.values())) if len(entries) == 1 else None

    def _inspect(self, kind: str, path: Path) -> modelinfo.Info:
        try:
            stat = path.stat()
        except OSError:
            return modelinfo.Info(problem=f"{path} is missing")
        key = (kind, str(path), stat.st_mtime_ns, stat.st_size)
        self._seen.add(key)  # versions no longer on disk are dropped after the scan
        if key not in self._infos:
            if kind == "ipadapter":  # its facts are kept too: they choose its image encoder
                self._adapters[key] = ipadapter_info.inspect_file(path)
                self._infos[key] = ipadapter_info.model_info(self._adapters[key])
            else:
                self._infos[key] = modelinfo.inspect(kind, path)
        return self._infos[key]

    def _adapter_facts(self, path: Path) -> ipadapter_info.Info:
        """What `_inspect` read of the IP-Adapter at `path` (this version of it), read once per version."""
        self._inspect("ipadapter", path)
        stat = path.stat()
        return self._adapters[("ipadapter", str(path), stat.st_mtime_ns, stat.st_size)]


#: rembg's session family of a background model, by a word in its file name (the first match wins)
_SESSION_HINTS = (
    ("birefnet", "birefnet-general"),
    ("isnet-anime", "isnet-anime"),
    ("isnet", "isnet-general-use"),
    ("u2netp", "u2netp"),
    ("u2net_human", "u2net_human_seg"),
    ("silueta", "silueta"),
    ("u2net", "u2net"),
)


def _tool_fields(kind: str, code: str, meta: dict[str, Any], info: modelinfo.Info) -> dict[str, Any]:
    """An upscaler's architecture and scale, an eraser's architecture, or a background model's session
    family: its sidecar's word, else its file name's."""
    fields: dict[str, Any] = {}
    if kind == "faces":
        fields["architecture"] = str(meta["Architecture"]) if meta.get("Architecture") else None
    elif kind == "inpaint":
        named = meta.get("Architecture") or ("LaMa" if "lama" in code.lower() else None)
        fields["architecture"] = str(named) if named else None
    elif kind == "upscale":
        scale = meta.get("Scale")
        fields["architecture"] = str(meta["Architecture"]) if meta.get("Architecture") else None
        fields["scale"] = int(scale) if isinstance(scale, int | float) and scale >= 1 else modelinfo.scale_in_name(code)
    elif kind == "background":
        fields["session"] = str(meta.get("Session") or session_in_name(code) or "u2net")
    return fields


#: the preprocessor a control model pairs with, by a word in its file name (the first match wins)
_PREPROCESSOR_HINTS = (
    ("canny", "canny"),
    ("depth", "depth"),
    ("openpose", "openpose"),
    ("pose", "openpose"),
    ("lineart_anime", "lineart_anime"),
    ("anime", "lineart_anime"),
    ("lineart", "lineart"),
    ("softedge", "softedge_hed"),
    ("hed", "softedge_hed"),
    ("scribble", "scribble_xdog"),
    ("sketch", "scribble_xdog"),
    ("normal", "normal_bae"),
    ("mlsd", "mlsd"),
    ("recolor", "recolor_luminance"),
    ("shuffle", "shuffle"),
    ("tile", "tile_resample"),
)


def _preprocessor_of(code: str, meta: dict[str, Any], info: modelinfo.Info) -> str | None:
    """A control model's preprocessor: its sidecar's `PreProcessor`, else its file name's; None for a
    ControlNet-Union (it takes any) or a name that says nothing."""
    if meta.get("PreProcessor"):
        return str(meta["PreProcessor"])
    if info.control == "union":
        return None
    lowered = code.lower()
    return next((pre for word, pre in _PREPROCESSOR_HINTS if word in lowered), None)


def _image_encoder(facts: ipadapter_info.Info, models_dir: Path, named: Any) -> tuple[Path | None, str | None]:
    """An IP-Adapter's (`facts`) image encoder folder (models/image_encoder/NAME): the sidecar's
    `ImageEncoder`, else the first whose widths fit; and why it has none (None: it has one)."""
    folder = models_dir / "image_encoder"
    if facts.problem:
        return None, facts.problem
    if named:
        chosen = folder / str(named)
        misfit = ipadapter_info.encoder_misfit(facts, ipadapter_info.read_encoder(chosen))
        return (chosen, None) if misfit is None else (None, f"its ImageEncoder {str(named)!r} does not fit: {misfit}")
    candidates = (
        sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    )
    for candidate in candidates:
        if ipadapter_info.encoder_misfit(facts, ipadapter_info.read_encoder(candidate)) is None:
            return candidate, None
    wanted = f"the {facts.encoder} encoder" if facts.encoder else "a CLIP vision encoder"
    return None, (
        f"no image encoder in models/image_encoder/ fits it: put {wanted} there (a folder with config.json "
        "and its weights, as h94/IP-Adapter ships models/image_encoder and sdxl_models/image_encoder)"
    )


def session_in_name(code: str) -> str | None:
    """A background model's rembg session family as its file name says it (`birefnet-…`, `isnet-…`,
    `u2net…`); None when it says none."""
    lowered = code.lower()
    return next((family for word, family in _SESSION_HINTS if word in lowered), None)

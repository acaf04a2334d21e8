"""What an IP-Adapter file is, and whether it fits a main model and an image encoder, from tensor shapes
and config.json alone: no torch, no pickle code run (the catalog and the server's submit checks use it;
the engine, engine/ipadapter.py, checks the same before it loads anything).

An IP-Adapter (h94/IP-Adapter's `.safetensors` or `.bin`) holds two parts, as flat keys or as two
nested dicts:

- `image_proj.*`: the image projection, which turns a CLIP vision encoder's output into extra tokens for
  the UNet's cross-attention. Its layout says the kind:
  - **plain** (`ip-adapter_sdxl`, `…_vit-h`): `proj.weight` (4·cross, E) and a LayerNorm: 4 tokens from
    the encoder's projected `image_embeds` (E = the encoder's `projection_dim`);
  - **plus** (`ip-adapter-plus_sdxl_vit-h`, `…plus-face…`): IP-Adapter's Resampler (`latents` (1, T, D),
    `proj_in` (D, E), perceiver layers, `proj_out` (cross, D)): T tokens (16) from the encoder's
    penultimate hidden states (E = its `hidden_size`);
  - **full** (`ip-adapter-full-face_sd15`): an MLP (`proj.0`, `proj.2`, LayerNorm `proj.3`): 257 tokens
    from the hidden states;
  - **faceid** / **faceid-plus** (`ip-adapter-faceid…`): fed by InsightFace face embeddings (and LoRA
    weights beside): recognised, so that the message is clear, but not run by picserve.
- `ip_adapter.<n>.to_k_ip.weight` / `to_v_ip.weight` (hidden, cross): the image tokens' keys and values
  for each cross-attention, n = 1, 3, 5, … in the UNet's attention-processor order (70 layers for SDXL,
  16 for SD1.5). The input width is the UNet's cross-attention width: 2048 for SDXL.

The encoder a file needs follows from E: h94's SDXL files use OpenCLIP ViT-H/14 (hidden 1280, projection
1024: h94's `models/image_encoder`) or ViT-bigG/14 (hidden 1664, projection 1280: `sdxl_models/
image_encoder`). `ip-adapter_sdxl` (plain, E 1280) takes bigG, `ip-adapter_sdxl_vit-h` (plain, E 1024)
and `ip-adapter-plus_sdxl_vit-h` (Plus, E 1280) take ViT-H: the same 1280 means bigG for a plain file
and ViT-H for a Plus one, so an encoder is checked on the width the kind reads (`encoder_misfit`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENCODERS",
    "KINDS",
    "SDXL_CROSS_ATTENTION",
    "SDXL_LAYERS",
    "SUPPORTED_KINDS",
    "EncoderInfo",
    "Info",
    "encoder_misfit",
    "inspect",
    "inspect_file",
    "misfit",
    "model_info",
    "read_encoder",
]

#: the UNet cross-attention width an SDXL IP-Adapter is made for
SDXL_CROSS_ATTENTION = 2048
#: SDXL's cross-attentions: each has its to_k_ip / to_v_ip pair in an SDXL IP-Adapter
SDXL_LAYERS = 70
#: every kind `inspect` tells apart
KINDS = ("plain", "plus", "full", "faceid", "faceid-plus")
#: the kinds the engine runs (the others need InsightFace face embeddings)
SUPPORTED_KINDS = ("plain", "plus", "full")
#: known CLIP vision encoders by (hidden_size, projection_dim), as h94 and A1111 name them
ENCODERS = {(1280, 1024): "ViT-H", (1664, 1280): "ViT-bigG", (1024, 768): "ViT-L"}

#: what each kind reads from the encoder: its projected `image_embeds`, or the penultimate hidden states
_READS = {"plain": "image_embeds", "plus": "hidden_states", "full": "hidden_states"}
_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")

#: tensor name → shape
Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Info:
    """An IP-Adapter file as its shapes describe it."""

    #: one of KINDS; None when the file is not an IP-Adapter
    kind: str | None = None
    #: the UNet cross-attention width its to_k_ip / to_v_ip take (2048: SDXL)
    cross_attention: int | None = None
    #: cross-attentions it has keys and values for (70: SDXL)
    layers: int = 0
    #: image tokens it adds to each cross-attention
    tokens: int | None = None
    #: the width of what it projects: the encoder's `projection_dim` (plain) or `hidden_size` (plus, full);
    #: InsightFace's embedding width for FaceID
    image_embeds: int | None = None
    #: what it reads from the encoder: "image_embeds", "hidden_states", or None (FaceID: face embeddings)
    encoder_output: str | None = None
    #: why the file cannot be used (not an IP-Adapter, inconsistent, a kind picserve does not run)
    problem: str | None = None

    @property
    def encoder(self) -> str | None:
        """The known encoder whose width this file reads ("ViT-H", "ViT-bigG", "ViT-L"), or None."""
        if self.encoder_output is None or self.image_embeds is None:
            return None
        axis = 0 if self.encoder_output == "hidden_states" else 1
        return next((name for widths, name in ENCODERS.items() if widths[axis] == self.image_embeds), None)


@dataclass(frozen=True)
class EncoderInfo:
    """A CLIP vision encoder folder as its config.json describes it."""

    hidden_size: int | None = None
    projection_dim: int | None = None
    image_size: int | None = None
    problem: str | None = None

    @property
    def name(self) -> str | None:
        """The encoder's name for known widths ("ViT-H", "ViT-bigG", "ViT-L"), else None."""
        return ENCODERS.get((self.hidden_size or 0, self.projection_dim or 0))


def inspect(shapes: Shapes) -> Info:
    """What the tensors `shapes` (modelinfo.read_shapes's map, flat keys) make: an IP-Adapter of which
    kind and widths, or an `Info` whose `problem` says why it is not one picserve can run."""
    proj = {k.removeprefix("image_proj."): tuple(v) for k, v in shapes.items() if k.startswith("image_proj.")}
    layers = {k: tuple(v) for k, v in shapes.items() if _LAYER_KEY.match(k)}
    numbers = sorted({int(k.split(".")[1]) for k in layers})
    if not proj or not layers:
        missing = " and ".join(part for part, have in (("image_proj", proj), ("ip_adapter", layers)) if not have)
        return Info(problem=f"not an IP-Adapter: it has no {missing} tensors")
    try:
        kind, tokens, embeds, out = _projection(proj)
    except (KeyError, IndexError, ZeroDivisionError):
        return Info(problem="not an IP-Adapter: its image_proj tensors are of no layout IP-Adapter files have")
    crosses = sorted({shape[-1] for shape in layers.values() if len(shape) == 2})
    info = Info(
        kind=kind,
        cross_attention=crosses[0] if len(crosses) == 1 else None,
        layers=len(numbers),
        tokens=tokens,
        image_embeds=embeds,
        encoder_output=_READS.get(kind),
    )
    problem = None
    if len(crosses) != 1:
        problem = f"its to_k_ip/to_v_ip tensors take inputs of different widths ({_listed(crosses)})"
    elif numbers != list(range(1, 2 * len(numbers), 2)):
        problem = "its ip_adapter layers are not numbered 1, 3, 5, … as IP-Adapter files number them"
    elif any(f"ip_adapter.{n}.to_{kv}_ip.weight" not in layers for n in numbers for kv in "kv"):
        problem = "some of its ip_adapter layers have to_k_ip without to_v_ip, or the other way round"
    elif out != crosses[0]:
        problem = f"its image projection makes {out}-wide tokens, its layers take {crosses[0]}-wide ones"
    elif kind not in SUPPORTED_KINDS:
        named = kind.replace("faceid", "FaceID").replace("-plus", " Plus")
        problem = f"an IP-Adapter {named} file: it needs InsightFace face embeddings, which picserve does not compute"
    return Info(**{**info.__dict__, "problem": problem})


def inspect_file(path: Path) -> Info:
    """`inspect` of the file at `path` (.safetensors, or a torch zip pickle read without running it);
    never raises for a bad file."""
    from picserve import modelinfo

    try:
        shapes, _ = modelinfo.read_shapes(Path(path))
    except modelinfo.UNREADABLE as exc:
        return Info(problem=f"unreadable {Path(path).suffix} file: {exc}")
    return inspect(shapes)


def model_info(facts: Info) -> Any:
    """What the catalog lists of an IP-Adapter (a modelinfo.Info) from `inspect`'s facts: the
    cross-attention width it fits (its base model), or why it cannot run."""
    from picserve import modelinfo

    dims = {"cross": (facts.cross_attention,)} if facts.cross_attention else {}
    base = modelinfo.base_of_cross(facts.cross_attention)
    return modelinfo.Info(base=base, dims=dims, problem=facts.problem, control="ipadapter")


def read_encoder(folder: Path) -> EncoderInfo:
    """The widths of the CLIP vision encoder in `folder`, from its config.json (a `CLIPVisionConfig`, or
    a whole CLIP model's config, whose `vision_config` is read); never raises."""
    path = Path(folder) / "config.json"
    try:
        config: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return EncoderInfo(problem=f"no readable config.json in {Path(folder).name} ({exc})")
    if not isinstance(config, dict):
        return EncoderInfo(problem=f"{Path(folder).name}/config.json is not a model config")
    nested = config.get("vision_config")
    vision: dict[str, Any] = nested if isinstance(nested, dict) else config
    projection = vision.get("projection_dim", config.get("projection_dim"))
    hidden, size = vision.get("hidden_size"), vision.get("image_size")
    if not all(isinstance(v, int) for v in (hidden, projection, size)):
        return EncoderInfo(problem=f"{Path(folder).name}/config.json is not a CLIP vision encoder's")
    return EncoderInfo(hidden_size=hidden, projection_dim=projection, image_size=size)


def misfit(info: Info, cross_attention: int | None = SDXL_CROSS_ATTENTION, layers: int | None = None) -> str | None:
    """Why the IP-Adapter `info` cannot run on a main model whose UNet cross-attention width is
    `cross_attention` (2048: SDXL; None: not checked) and that has `layers` cross-attentions (None: not
    checked; SDXL_LAYERS for SDXL), or None when it can."""
    if info.problem:
        return info.problem
    if cross_attention is not None and info.cross_attention != cross_attention:
        made = {768: " (an SD1.5 IP-Adapter)", 1024: " (an SD2 IP-Adapter)", 2048: " (an SDXL IP-Adapter)"}
        return (
            f"it is made for a UNet cross-attention width of {info.cross_attention}"
            f"{made.get(info.cross_attention or 0, '')}, the main model's is {cross_attention}"
        )
    if layers is not None and info.layers != layers:
        return f"it has keys and values for {info.layers} cross-attentions, the main model has {layers}"
    return None


def encoder_misfit(info: Info, encoder: EncoderInfo) -> str | None:
    """Why the image encoder `encoder` cannot feed the IP-Adapter `info`, or None when it can: a plain
    adapter projects the encoder's `image_embeds` (`projection_dim` wide), Plus and full ones its hidden
    states (`hidden_size` wide)."""
    if info.problem:
        return info.problem
    if encoder.problem:
        return encoder.problem
    field, have = (
        ("hidden_size", encoder.hidden_size)
        if info.encoder_output == "hidden_states"
        else ("projection_dim", encoder.projection_dim)
    )
    if have != info.image_embeds:
        wanted = f" (the {info.encoder} encoder's)" if info.encoder else ""
        what = "hidden states" if field == "hidden_size" else "image_embeds"
        return (
            f"it reads {info.image_embeds}-wide {what}{wanted}, "
            f"the encoder's are {have} wide ({field} {have}{', ' + encoder.name if encoder.name else ''})"
        )
    return None


def _projection(proj: Mapping[str, tuple[int, ...]]) -> tuple[str, int, int, int]:
    """The kind, tokens, input width and output (token) width of an image projection's tensors; raises
    KeyError/IndexError for a layout none of the kinds has (diffusers' conversion tells them apart the same way)."""
    if "proj.weight" in proj:  # ImageProjection: 4 tokens of the LayerNorm's width
        rows, embeds = proj["proj.weight"]
        width = proj["norm.weight"][0]
        if rows != 4 * width:
            raise KeyError("proj.weight")
        return "plain", 4, embeds, width
    if "proj.3.weight" in proj:  # IPAdapterFullImageProjection: CLS + 256 patch tokens
        return "full", 257, proj["proj.0.weight"][1], proj["proj.3.weight"][0]
    if "perceiver_resampler.proj_in.weight" in proj:
        return "faceid-plus", 4, proj["proj.0.weight"][1], proj["perceiver_resampler.proj_out.weight"][0]
    if "norm.weight" in proj:  # FaceID: an MLP from InsightFace's embedding
        cross = proj["norm.weight"][0]
        return "faceid", proj["proj.2.weight"][0] // cross, proj["proj.0.weight"][1], cross
    latents = proj["latents"]  # the Resampler (Plus)
    return "plus", latents[1], proj["proj_in.weight"][1], proj["proj_out.weight"][0]


def _listed(widths: Sequence[int]) -> str:
    return " and ".join(str(w) for w in sorted(set(widths)))

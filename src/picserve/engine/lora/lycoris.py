"""LyCORIS files (LoCon, LoHa, LoKr, full) and DoRA in the kohya layout: each module's weight patched in place.

**The files.** kohya's sd-scripts and the LyCORIS trainer name each adapted layer after the module it
changes, with dots as underscores: `lora_unet_<module>`, `lora_te1_<module>`, `lora_te2_<module>`,
where `<module>` is either the diffusers name (`down_blocks_1_attentions_0_…`, what LyCORIS writes for
a diffusers UNet) or the original SGM one (`input_blocks_4_1_…`, what sd-scripts writes for SDXL), and
a text encoder's module with or without transformers' `text_model.` prefix. Under each name, one
algorithm's tensors:

- LoCon (LoRA, on linear and conv layers): `lora_down`, `lora_up`, optional `lora_mid` (Tucker core of
  a 3×3 conv), `alpha`: ΔW = up · [mid ·] down × alpha / rank;
- LoHa: `hada_w1_a/b`, `hada_w2_a/b`, optional `hada_t1/t2`: ΔW = (w1a·w1b) ⊙ (w2a·w2b) × alpha / rank;
- LoKr: `lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b` (and `lokr_t2`): ΔW = w1 ⊗ w2 (Kronecker),
  × alpha / rank when a side is factorised;
- full: `diff` (and `diff_b` for the bias): ΔW = diff;
- any of them with `dora_scale` (weight-decomposed, DoRA): the merged weight W + ΔW is renormalised to
  the stored magnitude, per output row (or per input column, as the file's shape says).

**The mechanism, and why.** Two were possible: PEFT's LoHa/LoKr adapters (what diffusers' LoRA loader
builds on), or computing each module's ΔW and adding it to the weight, keeping a copy of the original,
as A1111 and ComfyUI do. PEFT does not fit: diffusers' `load_lora_weights` refuses LoHa/LoKr state
dicts for SDXL, PEFT has no LoCon-with-Tucker, kohya-layout DoRA or full-diff adapter, and every PEFT
adapter adds work to every forward pass, while a patched weight costs nothing per step (bench/lora_mechanisms.py,
docs/performance.md: a step with a PEFT LoRA +63% on the tiny SDXL, patched = base; patching the file
35 ms against diffusers' `load_lora_weights` 1.2 s). Patching costs one ΔW per module when the request's set of
these files changes (kept while consecutive requests use the same set, as LoRA adapters are) and the
restore is a copy of the saved original, so the base model comes back bit for bit. The originals are
kept on the CPU (as ComfyUI does), so a patched model on a GPU takes no extra GPU memory.

**Why not LyCORIS' merge itself.** lycoris-lora 4.1.3's LoHa and LoKr `get_diff_weight` (its merge)
multiply by alpha/rank twice, so its merged model differs from the network its forward trained; picserve
computes ΔW as their forward does (and as A1111 and ComfyUI do), which the tests check layer by layer.

**Weights.** W' = W + w·ΔW for a file at weight w. For DoRA, W' = W + w·(W_dora − W), with W_dora the
renormalised W + ΔW: at w = 1 it is the file's weight exactly (LyCORIS' own merge), and w moves linearly
between the base and it, as A1111 and ComfyUI weight DoRA (LyCORIS' own merge at w ≠ 1 keeps the full
ΔW and scales only the renormalisation; at w = 0 it would not be the base model). A weight of 0 is never
patched at all (engine/adapters.py skips the file): the base image, bit for bit.

**Nothing partial.** Every tensor of a file must land on a layer of the model: a module name that matches
nothing (a file for another base model, an unknown naming scheme) or a tensor of an algorithm this
module does not implement (OFT, BOFT, (IA)³, GLoKr, norm layers) refuses the whole file with the keys
listed, before anything is changed; a shape that does not fit is refused likewise, and a file failing
half-way through restores what it had patched.

**DoRA in the diffusers/PEFT layout** (`unet.<module>.lora_A.weight`, `lora_B`, `lora_magnitude_vector`,
as peft and diffusers' `save_lora_weights` write it) is read here too, renamed to the kohya layout
(`kohya_layout`), with PEFT's `lora_alpha` from the file's `lora_adapter_metadata` when it has one (else
alpha = rank, diffusers' default): diffusers 0.42's loader drops the text encoders' magnitude vectors
(transformers 5 names them `….lora_magnitude_vector.<adapter>.weight`) without a word.

Plain LoRAs (kohya `lora_down`/`lora_up`/`alpha` or PEFT `lora_A`/`lora_B`, on linear layers) keep going
through diffusers' loader (peft_adapters.py, or slots.py with a compiled UNet): `is_lycoris` tells them apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from picserve.engine import checkpoint

__all__ = [
    "PatchError",
    "Patcher",
    "Targets",
    "is_lycoris",
    "kohya_layout",
    "peft_alphas",
    "targets_of",
    "unmatched_layers",
]

#: tensor names (after the module's name) of each algorithm
_ALGORITHMS = {
    "locon": {"lora_up.weight", "lora_down.weight", "lora_mid.weight"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
    "full": {"diff", "diff_b"},
}
_COMMON = {"alpha", "dora_scale"}
_KNOWN = set().union(*_ALGORITHMS.values(), _COMMON)
#: what only LyCORIS files (not plain LoRAs) have
_LYCORIS_ONLY = _KNOWN - {"lora_up.weight", "lora_down.weight", "alpha"}
_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_")
#: PEFT's parts of a wrapped layer: not layers of the model
_PEFT_PARTS = re.compile(r"\.(lora_A|lora_B|lora_embedding_[AB]|lora_magnitude_vector|lora_dropout)(\.|$)")


class PatchError(ValueError):
    """A file that cannot be applied to this model; the message says why (keys listed). `file`: the id
    the caller gave the file (Patcher.apply)."""

    def __init__(self, message: str, file: str = "") -> None:
        super().__init__(message)
        self.file = file


_PEFT_COMPONENTS = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
_PEFT_SUFFIXES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.weight": "dora_scale",
}
_PEFT_KEY = re.compile(
    r"^(unet|text_encoder|text_encoder_2)\.(.+?)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$"
)


def _is_peft_dora(state: Mapping[str, Any]) -> bool:
    return any(key.endswith((".lora_magnitude_vector", ".lora_magnitude_vector.weight")) for key in state)


def peft_alphas(metadata: Mapping[str, str] | None) -> dict[str, float]:
    """PEFT's `lora_alpha` per component ("unet", "text_encoder", …) from a diffusers file's metadata."""
    try:
        packed = json.loads((metadata or {}).get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    alphas = {}
    for component in _PEFT_COMPONENTS:
        value = packed.get(f"{component}.lora_alpha") if isinstance(packed, dict) else None
        if isinstance(value, (int, float)):
            alphas[component] = float(value)
    return alphas


def kohya_layout(state: Mapping[str, torch.Tensor], alphas: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A DoRA state dict in the diffusers/PEFT layout renamed to the kohya layout (`alphas`: PEFT's
    lora_alpha per component; absent = the rank); any other state dict as it is. A key of neither layout
    is kept as it is, for `parse` to refuse by name."""
    if not _is_peft_dora(state):
        return dict(state)
    out: dict[str, Any] = {}
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            out[key] = value
            continue
        component, module, suffix = match.groups()
        name = _PEFT_COMPONENTS[component] + module.replace(".", "_")
        out[f"{name}.{_PEFT_SUFFIXES[suffix]}"] = value
        alpha = (alphas or {}).get(component)
        if suffix == "lora_A.weight" and alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def unmatched_layers(state: Mapping[str, Any], pipe: Any) -> list[str]:
    """The layers a plain LoRA in the kohya or PEFT layout names that the model does not have (diffusers'
    loader would skip them without a word); [] for a file of another layout, which it checks itself."""
    names: set[str] = set()
    for key in state:
        if key.startswith(_PREFIXES):
            names.add(key.partition(".")[0])
        elif match := re.match(r"^(unet|text_encoder|text_encoder_2)\.(.+?)\.lora_[AB]\.weight$", key):
            names.add(_PEFT_COMPONENTS[match.group(1)] + match.group(2).replace(".", "_"))
        elif not key.endswith((".alpha", ".lora_magnitude_vector")):
            return []
    targets = targets_of(pipe)
    return sorted(name for name in names if targets.get(name) is None)


def is_lycoris(state: Mapping[str, Any]) -> bool:
    """Whether a state dict needs this module: kohya-layout keys with LyCORIS or DoRA tensors, a LoRA
    on conv layers (LoCon, 4-D `lora_down`), or a DoRA in the PEFT layout."""
    if _is_peft_dora(state):
        return True
    for key, value in state.items():
        if not key.startswith(_PREFIXES):
            continue
        suffix = key.partition(".")[2]
        if suffix in _LYCORIS_ONLY:
            return True
        if suffix == "lora_down.weight" and getattr(value, "ndim", 0) == 4:
            return True
    return False


@dataclass
class Targets:
    """The model's patchable layers (linear and conv weights) by every name a file may call them."""

    modules: dict[str, nn.Module] = field(default_factory=dict)

    def get(self, name: str) -> nn.Module | None:
        return self.modules.get(name)


def _layers(component: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """(name, layer) of a component's linear and conv layers, by their names before PEFT wrapped any."""
    for name, module in component.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not _PEFT_PARTS.search(name):
            yield name.replace(".base_layer", ""), module


def targets_of(pipe: Any) -> Targets:
    """Every kohya name of every patchable layer of an SDXL pipeline's UNet and text encoders."""
    found = Targets()
    config = dict(pipe.unet.config)
    for name, module in _layers(pipe.unet):
        found.modules["lora_unet_" + name.replace(".", "_")] = module
        sgm_name = checkpoint.sgm_unet_key(name + ".weight", config).removesuffix(".weight")
        found.modules.setdefault("lora_unet_" + sgm_name.replace(".", "_"), module)
    for tag, encoder in (("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)):
        for name, module in _layers(encoder):
            bare = name.removeprefix("text_model.")
            for spelling in (bare, "text_model." + bare):
                found.modules.setdefault(f"lora_{tag}_" + spelling.replace(".", "_"), module)
    return found


@dataclass(frozen=True)
class _Layer:
    """One layer's tensors in a file."""

    name: str
    algorithm: str
    tensors: dict[str, torch.Tensor]

    def get(self, key: str) -> torch.Tensor | None:
        return self.tensors.get(key)


def parse(state: Mapping[str, torch.Tensor], targets: Targets) -> list[tuple[nn.Module, _Layer]]:
    """The file's layers, each with the model's layer it patches; refuses the file (PatchError, keys
    listed) when any tensor would land nowhere."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        if suffix in _KNOWN:
            grouped.setdefault(name, {})[suffix] = value
        else:
            unknown.append(key)
    if unknown:
        raise PatchError(f"{len(unknown)} of its keys are of no layout picserve applies: {_listed(unknown)}")
    unmatched = [name for name in grouped if targets.get(name) is None]
    if unmatched:
        raise PatchError(
            f"{len(unmatched)} of its {len(grouped)} layers match no layer of this model "
            f"(made for another base model, or an unknown naming): {_listed(unmatched)}"
        )
    layers = []
    for name, tensors in grouped.items():
        algorithms = [algo for algo, keys in _ALGORITHMS.items() if keys & tensors.keys()]
        if len(algorithms) != 1:
            raise PatchError(f"layer {name} has {'no' if not algorithms else 'mixed'} weights: {sorted(tensors)}")
        module = targets.get(name)
        assert module is not None
        layers.append((module, _Layer(name, algorithms[0], tensors)))
    return layers


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" … ({len(names) - limit} more)" if len(names) > limit else "")


# --- ΔW ------------------------------------------------------------------------------------------------
def _tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """A Tucker-factorised conv weight: core (r_up, r_down, kh, kw) between down (r_down, in) and
    up (r_up, out) → (out, in, kh, kw)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, down, up)


def _scale(layer: _Layer, rank: int | None) -> float:
    alpha = layer.get("alpha")
    if alpha is None or rank is None or rank == 0:
        return 1.0
    value = float(alpha)
    return value / rank if value else 1.0


def _need(layer: _Layer, key: str) -> torch.Tensor:
    value = layer.get(key)
    if value is None:
        raise PatchError(f"layer {layer.name} ({layer.algorithm}) has no {key}")
    return value


def delta(layer: _Layer, shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ΔW, Δbias) of one layer at weight 1, float32 on `device`, ΔW in the weight's `shape`."""

    def t(key: str) -> torch.Tensor:
        return _need(layer, key).to(device=device, dtype=torch.float32)

    def opt(key: str) -> torch.Tensor | None:
        return t(key) if layer.get(key) is not None else None

    bias = None
    if layer.algorithm == "full":
        weight, bias = t("diff"), opt("diff_b")
        return weight.reshape(shape), bias
    if layer.algorithm == "locon":
        down, up = t("lora_down.weight"), t("lora_up.weight")
        rank = down.shape[0]
        mid = opt("lora_mid.weight")
        if mid is not None:
            weight = _tucker(mid, down.flatten(1), up.flatten(1).T)
        else:
            weight = up.flatten(1) @ down.flatten(1)
        return _fit(layer, weight, shape) * _scale(layer, rank), None
    if layer.algorithm == "loha":
        w1a, w1b, w2a, w2b = t("hada_w1_a"), t("hada_w1_b"), t("hada_w2_a"), t("hada_w2_b")
        rank = w1b.shape[0]
        t1, t2 = opt("hada_t1"), opt("hada_t2")
        if t1 is not None and t2 is not None:
            weight = _tucker(t1, w1b, w1a) * _tucker(t2, w2b, w2a)
        else:
            w1 = w1a.reshape(-1, w1a.shape[1]) @ w1b.reshape(w1b.shape[0], -1)  # a conv's: (r, in, kh, kw)
            weight = w1 * (w2a.reshape(-1, w2a.shape[1]) @ w2b.reshape(w2b.shape[0], -1))
        return _fit(layer, weight, shape) * _scale(layer, rank), None
    # lokr: each side whole or factorised; alpha / rank applies when one is factorised
    w1, w2 = opt("lokr_w1"), opt("lokr_w2")
    rank = None
    if w1 is None:
        w1a, w1b = t("lokr_w1_a"), t("lokr_w1_b")
        w1, rank = w1a @ w1b, w1b.shape[0]
    if w2 is None:
        w2a, w2b = t("lokr_w2_a"), t("lokr_w2_b")
        rank = w2b.shape[0]
        t2 = opt("lokr_t2")
        if t2 is not None:
            w2 = _tucker(t2, w2b, w2a.T)
        else:
            w2 = (w2a @ w2b.flatten(1)).reshape(w2a.shape[0], *w2b.shape[1:])
    while w1.ndim < w2.ndim:
        w1 = w1.unsqueeze(-1)
    weight = torch.kron(w1, w2.contiguous())
    return _fit(layer, weight, shape) * _scale(layer, rank), None


def _fit(layer: _Layer, weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if weight.numel() != shape.numel():
        raise PatchError(
            f"layer {layer.name} ({layer.algorithm}) makes a {tuple(weight.shape)} change "
            f"for a {tuple(shape)} weight (made for another model)"
        )
    return weight.reshape(shape)


def _decomposed(merged: torch.Tensor, magnitude: torch.Tensor, layer: _Layer) -> torch.Tensor:
    """DoRA: `merged` renormalised to `magnitude`, per output row, or per input column when the file's
    magnitude has the input's shape (LyCORIS' wd_on_out=False)."""
    magnitude = magnitude.to(merged)
    dims = merged.ndim
    shape = tuple(magnitude.shape)
    rows = (merged.shape[0], *[1] * (dims - 1))
    columns = (1, merged.shape[1], *[1] * (dims - 2)) if dims > 1 else None
    if shape in (rows, (merged.shape[0],)):  # LyCORIS' default (wd_on_out), and PEFT's magnitude vector
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(rows)
    elif shape == columns:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1).reshape(columns)
    else:
        raise PatchError(f"layer {layer.name}: its dora_scale {shape} fits no axis of the {tuple(merged.shape)} weight")
    magnitude = magnitude.reshape(norm.shape)
    return merged * (magnitude / (norm + torch.finfo(merged.dtype).eps))


# --- patching -------------------------------------------------------------------------------------------
class Patcher:
    """The LyCORIS files patched into one loaded model, and the originals of what they changed.

    `apply(files)` brings the model to exactly that set (file id, contents, weight) — nothing to do when it
    is the set already applied; otherwise the originals come back first, then each file is patched in
    order. `restore()` brings the base model back bit for bit.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._originals: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.applied: tuple[tuple[str, float], ...] = ()

    def apply(self, files: Sequence[tuple[str, Mapping[str, torch.Tensor], float]]) -> None:
        """`files`: (an id naming the file and its version, its state dict, weight), in order."""
        wanted = tuple((ident, weight) for ident, _, weight in files)
        if wanted == self.applied:
            return
        self.restore()
        targets = targets_of(self.pipe)  # the layers as they are now (PEFT may have wrapped some since)
        parsed = []
        for ident, state, weight in files:  # every file checked before any is applied
            try:
                parsed.append((ident, parse(state, targets), weight))
            except PatchError as exc:
                raise PatchError(str(exc), ident) from None
        current = ""
        try:
            for name, layers, weight in parsed:
                current = name
                for module, layer in layers:
                    self._patch(module, layer, weight)
        except PatchError as exc:
            self.restore()
            raise PatchError(str(exc), current) from None
        except BaseException:
            self.restore()
            raise
        self.applied = wanted

    @torch.no_grad()
    def _patch(self, module: nn.Module, layer: _Layer, weight: float) -> None:
        param: torch.Tensor = module.weight
        bias: torch.Tensor | None = module.bias
        change, bias_change = delta(layer, param.shape, param.device)
        if bias_change is not None and bias is None:
            raise PatchError(f"layer {layer.name} changes a bias the model's layer does not have")
        if module not in self._originals:
            keep = torch.device("cpu")
            self._originals[module] = (
                param.detach().to(keep, copy=True),
                None if bias is None else bias.detach().to(keep, copy=True),
            )
        current = param.detach().float()
        magnitude = layer.get("dora_scale")
        if magnitude is not None:
            decomposed = _decomposed(current + change, magnitude.to(param.device), layer)
            new = current + weight * (decomposed - current)
        else:
            new = current + weight * change
        param.copy_(new.to(param.dtype))
        if bias_change is not None and bias is not None:
            bias.copy_((bias.detach().float() + weight * bias_change.reshape(bias.shape)).to(bias.dtype))

    @torch.no_grad()
    def restore(self) -> None:
        for module, (weight, bias) in self._originals.items():
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(bias)
        self._originals.clear()
        self.applied = ()

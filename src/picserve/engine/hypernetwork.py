"""A1111 hypernetworks on SDXL: small MLPs that transform the cross-attention context before `to_k`/`to_v`.

A1111 stores, per context width, two `HypernetworkModule`s (keys, values): an nn.Sequential of linears
(and activations, layer norms, dropouts, which shift the indices), applied as `x + mlp(x) × multiplier`.
Files are loaded with `weights_only=True`: their pickles are plain dicts of tensors, never run as code.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Hypernetwork", "HypernetworkModule", "applied", "load"]

_ACTIVATIONS = {
    "linear": None,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}


class HypernetworkModule(nn.Module):
    """One A1111 MLP rebuilt from its state dict: linears and layer norms by index, activations between."""

    def __init__(self, state: dict[str, torch.Tensor], activation: str, activate_output: bool) -> None:
        super().__init__()
        indexes = sorted({int(k.split(".")[1]) for k in state if k.startswith("linear.")})
        layers: list[nn.Module] = []
        kinds: list[str] = []  # "linear" or "norm", per layer
        for i in indexes:
            weight, bias = state[f"linear.{i}.weight"], state.get(f"linear.{i}.bias")
            if weight.ndim == 2:
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
                kinds.append("linear")
            else:
                layer = nn.LayerNorm(weight.shape[0])
                kinds.append("norm")
            layer.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
            layers.append(layer)
        act = _ACTIVATIONS.get((activation or "linear").lower())
        last_linear = max(i for i, k in enumerate(kinds) if k == "linear")
        sequence: list[nn.Module] = []
        for i, layer in enumerate(layers):
            sequence.append(layer)
            # A1111: an activation after every linear but the last (unless activate_output)
            if kinds[i] == "linear" and act is not None and (i != last_linear or activate_output):
                sequence.append(act())
        self.mlp = nn.Sequential(*sequence)
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x) * self.multiplier


#: context width → (keys module, values module)
Hypernetwork = dict[int, tuple[HypernetworkModule, HypernetworkModule]]


def load(path: Path) -> Hypernetwork:
    """An A1111 hypernetwork file's modules, per context width; what torch raises for a damaged file
    (the caller names the sub-model in its error)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"not an A1111 hypernetwork (a {type(data).__name__}, not a dict)")
    activation = data.get("activation_func", "linear")
    activate_output = bool(data.get("activate_output", False))

    def module(state: dict[str, torch.Tensor]) -> HypernetworkModule:
        return HypernetworkModule(state, activation, activate_output).eval()

    return {width: (module(pair[0]), module(pair[1])) for width, pair in data.items() if isinstance(width, int)}


class _Processor:
    """SDPA cross-attention whose keys and values see the hypernetwork-transformed context."""

    def __init__(self, base: Any, chain: list[tuple[HypernetworkModule, HypernetworkModule]]) -> None:
        #: the processor this one replaces: it handles self-attention and anything unusual
        self.base = base
        #: (keys module, values module) of each hypernetwork, applied in order
        self.chain = chain

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attention_mask is not None or attn.spatial_norm is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        context_k = context_v = encoder_hidden_states
        for module_k, module_v in self.chain:
            context_k, context_v = module_k(context_k), module_v(context_v)
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def applied(unet: Any, networks: list[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """Install the hypernetworks (each with its multiplier) on every cross-attention (`attn2`) of `unet`;
    the original processors come back after."""
    if not networks:
        yield
        return
    width = unet.config.cross_attention_dim
    chain: list[tuple[HypernetworkModule, HypernetworkModule]] = []
    for modules, multiplier in networks:
        if width not in modules:  # as in A1111, a network without this width does nothing
            continue
        # copies on the UNet's device and in its dtype, for this request only: the file cache's modules
        # stay in RAM as read (moved in place, they would stay on the GPU outside the model budget)
        keys_module, values_module = (copy.deepcopy(m).to(unet.device, unet.dtype) for m in modules[width])
        keys_module.multiplier = values_module.multiplier = multiplier
        chain.append((keys_module, values_module))
    original = unet.attn_processors
    replaced = {name: _Processor(proc, chain) if ".attn2." in name else proc for name, proc in original.items()}
    unet.set_attn_processor(replaced)
    try:
        yield
    finally:
        unet.set_attn_processor(original)

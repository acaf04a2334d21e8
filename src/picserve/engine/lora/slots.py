"""LoRA hot-swap slots: LoRAs on a compiled UNet without changing its graph (diffusers' hot-swap).

Loading a PEFT adapter changes the UNet's modules, and with them the compiled graph. With compile on
(engine/acceleration.py: `PICSERVE_COMPILE`), `acceleration.prepare` gives the UNet `LoraSlots`:
`PICSERVE_LORA_SLOTS` PEFT adapters of rank `PICSERVE_LORA_MAX_RANK` on every linear layer (what LoRA
files target; LoCon files, on convs, are patched into the weights instead, lycoris.py), all always
active, their scalings tensors (peft's `prepare_model_for_compiled_hotswap`). A request's LoRA is put
into a slot with diffusers' hot-swap (`load_lora_into_unet(..., adapter_name=slot, hotswap=True)`: the
weights copied into the slot's, zero-padded to its rank, layers the file does not target zeroed) and
weighted by writing the slot's scaling tensors in place (`LoraSlots.set_weights`), so neither a new LoRA
nor a new weight changes the graph. A slot not in use has weight 0: its term is exactly 0, and the image
is the base model's bit for bit (tested; compiled, a request without LoRAs gives the same image whatever
the slots hold). The price: every linear layer computes `lora_slots` extra rank-`lora_max_rank` products
at every step, used or not; bench/sdxl.py measures it.

A request's LoRAs (`set_loras`): each file's UNet part goes into a slot, where it stays until its slot is
needed for another file (a free one first, else the least recently used one this request does not
apply); the request weights the slots, those it does not use at 0. Text encoders are not compiled: a
LoRA's text-encoder parts stay PEFT adapters there, as without compile (diffusers cannot hot-swap them).
A request may then apply at most as many LoRAs with a UNet part as there are slots, each of a rank up to
the slots'; beyond that it fails with a `ModelLoadError` that says so, the main model left unchanged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from picserve import errors
from picserve.engine import loader, memory
from picserve.engine.lora.files import Files, SubFile, adapter_name, plain_state

__all__ = ["LoraSlots", "forget", "set_loras"]

log = logging.getLogger(__name__)


class LoraSlots:
    """A compiled UNet's LoRA hot-swap slots (see the module docstring).

    `count` PEFT adapters named `names`, of rank `max_rank`, on every linear layer of the UNet, always
    active. `set_loras` puts a LoRA's UNet part into a slot (`load`), weights the slots for each request
    (`set_weights`; a slot left out gets 0) and records in `holding` what each slot holds.
    """

    def __init__(self, unet: nn.Module, count: int, max_rank: int) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        # Equal-length names: peft's hot-swap finds a slot's keys by substring, so no name may hold another.
        self.names = tuple(f"picserve_slot_{i:02d}" for i in range(count))
        self.max_rank = max_rank
        #: what `set_loras` loaded into each slot (its adapter name), None for a free slot
        self.holding: list[str | None] = [None] * count
        #: slots lost to a hot-swap that failed inside diffusers (which then deletes the adapter): never used again
        self.dead: set[int] = set()
        self._unet = unet
        targets = sorted(name for name, module in unet.named_modules() if isinstance(module, nn.Linear))
        self._targets = frozenset(targets)
        for name in self.names:
            # alpha = rank: a scaling of 1 until a file's own is swapped in
            unet.add_adapter(LoraConfig(r=max_rank, lora_alpha=max_rank, target_modules=targets), adapter_name=name)
        unet.set_adapters(list(self.names), [0.0] * count)  # all active, each at weight 0
        prepare_model_for_compiled_hotswap(unet, target_rank=max_rank, check_compiled="ignore")  # scalings: tensors
        self._layers = [m for m in unet.modules() if isinstance(m, LoraLayer) and self.names[0] in m.scaling]
        #: per slot, the scaling its file gives each layer at weight 1 (alpha / rank), in `_layers` order
        self._scales: list[list[float]] = [[0.0] * len(self._layers) for _ in self.names]
        self._weights: list[float] = [0.0] * count

    @property
    def count(self) -> int:
        return len(self.names)

    def load(self, pipe: Any, index: int, state_dict: dict[str, Any], network_alphas: Any, metadata: Any) -> None:
        """Hot-swap a LoRA's UNet part into slot `index`, at weight 0 until `set_weights`.

        `state_dict`, `network_alphas`, `metadata`: what diffusers' `lora_state_dict` returns for the file.
        Raises ValueError, the slot left free, for a file the slots cannot take: a rank above theirs, a
        layer they do not cover, DoRA (lycoris.py patches those). Checked here, before diffusers is called:
        a hot-swap that fails inside diffusers deletes the slot's adapter (a change of the graph), and
        the slot is then dead.
        """
        config, layers = _unet_lora_config(state_dict, network_alphas, metadata)
        rank = max([config.r, *config.rank_pattern.values()])
        if rank > self.max_rank:
            raise ValueError(
                f"its rank {rank} is above the {self.max_rank} of the compiled UNet's LoRA slots "
                "(PICSERVE_LORA_MAX_RANK)"
            )
        if uncovered := sorted(layers - self._targets):
            raise ValueError(
                f"it changes layers the compiled UNet's LoRA slots do not cover: {', '.join(uncovered[:8])}"
            )
        if config.use_dora:
            raise ValueError("it is a DoRA in a layout the compiled UNet's LoRA slots do not take")
        name = self.names[index]
        self.holding[index] = None
        # peft refuses to hot-swap a file whose config differs from the slot's in these, lest the slot
        # keep the old alphas; but it sets every layer's scaling from the new file's config, so the slot
        # takes the file's (dropout does nothing at inference).
        slot_config = self._unet.peft_config[name]
        slot_config.alpha_pattern = dict(config.alpha_pattern)
        slot_config.lora_dropout = config.lora_dropout
        slot_config.use_rslora = config.use_rslora
        try:
            pipe.load_lora_into_unet(
                state_dict,
                network_alphas=network_alphas,
                unet=pipe.unet,
                adapter_name=name,
                metadata=metadata,
                _pipeline=pipe,
                hotswap=True,
            )
            # peft set each layer's scaling to the file's alpha / rank (layers it does not target: zeroed)
            self._scales[index] = torch.stack([layer.scaling[name] for layer in self._layers]).float().tolist()
        except BaseException:
            if name not in getattr(self._unet, "peft_config", {}):
                self.dead.add(index)
                log.error("LoRA slot %s was deleted by a failed hot-swap; %d slots left", name, self.usable)
            raise
        finally:
            self._weights[index] = float("nan")  # written anew below, whatever it was
            self._fill(index, 0.0)

    @property
    def usable(self) -> int:
        return self.count - len(self.dead)

    def set_weights(self, weights: Mapping[int, float]) -> None:
        """Each slot's weight: `weights[index]`, 0 for a slot left out."""
        for index in range(self.count):
            self._fill(index, weights.get(index, 0.0))

    def _fill(self, index: int, weight: float) -> None:
        if self._weights[index] == weight or index in self.dead:
            return
        name = self.names[index]
        with torch.no_grad():
            for layer, scale in zip(self._layers, self._scales[index], strict=True):
                layer.scaling[name].fill_(weight * scale)
        self._weights[index] = weight


def _unet_lora_config(state_dict: dict[str, Any], network_alphas: Any, metadata: Any) -> tuple[Any, set[str]]:
    """The LoraConfig diffusers' `load_lora_adapter` builds for a file's UNet part (the same steps, with
    diffusers' own functions), and the UNet layers it changes."""
    from diffusers.utils import convert_unet_state_dict_to_peft, get_peft_kwargs
    from peft import LoraConfig

    state = {key.removeprefix("unet."): value for key, value in state_dict.items() if key.startswith("unet.")}
    if state and "lora_A" not in next(iter(state)):
        state = convert_unet_state_dict_to_peft(state)
    layers = {key.split(".lora_")[0] for key in state}
    if metadata:
        metadata = {k.removeprefix("unet."): v for k, v in metadata.items() if k.startswith("unet.")}
    if metadata:
        return LoraConfig(**metadata), layers
    ranks = {f"^{key}": value.shape[1] for key, value in state.items() if "lora_B" in key and value.ndim > 1}
    alphas = {k.removeprefix("unet."): v for k, v in (network_alphas or {}).items() if k.startswith("unet.")}
    return LoraConfig(**get_peft_kwargs(ranks, network_alpha_dict=alphas or None, peft_state_dict=state)), layers


# --- a request's LoRAs ---------------------------------------------------------------------------------
def set_loras(
    files: Files, model: loader.LoadedModel, slots: LoraSlots, loras: Sequence[SubFile], max_loras: int
) -> None:
    """`loras` on a compiled UNet: each file's UNet part in a slot (hot-swapped in unless a slot holds
    that version already), its text-encoder parts PEFT adapters of the encoders; the slots weighted
    for this request, every other slot at 0, so that the graph never changes."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    wanted = {adapter_name(lora.code): lora.weight for lora in loras}
    for lora in loras:
        name = adapter_name(lora.code)
        if model.loras.get(name) != lora.version:
            forget(model, slots, name)  # an older version of the file, or nothing
            _load(files, model, slots, lora, name, set(wanted))
            model.loras[name] = lora.version
        model.loras.move_to_end(name)
    # Files with text-encoder parts only hold no slot: the least recently used beyond the bound leave.
    unslotted = [name for name in model.loras if name not in wanted and name not in slots.holding]
    for name in unslotted[: max(0, len(unslotted) - max_loras)]:
        forget(model, slots, name)
    slots.set_weights({i: wanted[name] for i, name in enumerate(slots.holding) if name in wanted})
    for encoder in _encoders(model.base):
        names = [name for name in wanted if name in _encoder_adapters(encoder)]
        if names:
            set_adapters_for_text_encoder(names, encoder, [wanted[name] for name in names])
            enable_lora_for_text_encoder(encoder)
        elif _encoder_adapters(encoder):
            disable_lora_for_text_encoder(encoder)


def _load(
    files: Files, model: loader.LoadedModel, slots: LoraSlots, lora: SubFile, name: str, wanted: set[str]
) -> None:
    """Load one LoRA for a compiled UNet, all or nothing: its UNet part into a free slot (or the least
    recently used one this request does not need), its text-encoder parts as adapters `name`."""
    pipe = model.base
    state = plain_state(files, pipe, lora)
    keys, index = len(state), None
    with warnings.catch_warnings():  # peft: "Already found a peft_config attribute" is expected
        warnings.simplefilter("ignore")
        try:
            converted, alphas, metadata = pipe.lora_state_dict(
                state, unet_config=pipe.unet.config, return_lora_metadata=True
            )
            if any(key.startswith("unet.") for key in converted):
                index = _free_slot(model, slots, lora, wanted)
                slots.load(pipe, index, converted, alphas, metadata)
                slots.holding[index] = name
            for encoder, prefix in zip(_encoders(pipe), ("text_encoder", "text_encoder_2"), strict=True):
                if any(key.startswith(prefix + ".") for key in converted):
                    pipe.load_lora_into_text_encoder(
                        converted,
                        network_alphas=alphas,
                        text_encoder=encoder,
                        prefix=prefix,
                        adapter_name=name,
                        metadata=metadata,
                        _pipeline=pipe,
                    )
        except errors.ModelLoadError:
            raise
        except BaseException as exc:
            forget(model, slots, name)
            if memory.is_out_of_memory(exc) or not isinstance(exc, Exception):
                raise
            raise files.failed(lora, f"could not be applied: {loader.one_line(exc, files.models_dir)}") from exc
    if index is None and not any(name in _encoder_adapters(encoder) for encoder in _encoders(pipe)):
        raise files.failed(lora, f"could not be applied: none of its {keys} keys matches a layer of this model")


def _free_slot(model: loader.LoadedModel, slots: LoraSlots, lora: SubFile, wanted: set[str]) -> int:
    """A slot for a LoRA of this request: a free one, else the one of the least recently used file
    this request does not apply (that file is unloaded)."""
    alive = [i for i in range(slots.count) if i not in slots.dead]
    if free := [i for i in alive if slots.holding[i] is None]:
        return free[0]
    order = {name: position for position, name in enumerate(model.loras)}  # least recently used first
    taken = [i for i in alive if slots.holding[i] not in wanted]
    if not taken:
        raise errors.ModelLoadError(
            f"LoRA {lora.code!r} could not be applied: this request applies more LoRAs than the "
            f"{slots.usable} LoRA slots of this worker's compiled UNet; the main model was left unchanged. "
            f"Submit the task with at most {slots.usable} LoRAs, or ask the operator to raise PICSERVE_LORA_SLOTS"
        )
    index = min(taken, key=lambda i: order.get(slots.holding[i] or "", -1))
    held = slots.holding[index]
    if held is not None:
        forget(model, slots, held)
    return index


def forget(model: loader.LoadedModel, slots: LoraSlots, name: str) -> None:
    """Unload the LoRA `name` from `model`: its hot-swap slot (left at weight 0 until it is reused) and
    its text-encoder adapters."""
    model.loras.pop(name, None)
    if name in slots.holding:
        slots.holding[slots.holding.index(name)] = None
    for encoder in _encoders(model.base):
        _delete_encoder_adapter(encoder, name)


def _encoders(pipe: Any) -> tuple[Any, Any]:
    return pipe.text_encoder, pipe.text_encoder_2


def _encoder_adapters(encoder: Any) -> set[str]:
    """The PEFT adapters loaded into a text encoder."""
    return set(getattr(encoder, "peft_config", None) or {})


def _delete_encoder_adapter(encoder: Any, name: str) -> None:
    """Delete the adapter `name` from one text encoder (it may hold none)."""
    if name in _encoder_adapters(encoder):
        from diffusers.utils.peft_utils import delete_adapter_layers

        with warnings.catch_warnings():  # peft: "Adapter … was active which is now deleted"
            warnings.simplefilter("ignore", UserWarning)
            delete_adapter_layers(encoder, name)

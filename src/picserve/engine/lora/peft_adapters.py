"""Plain LoRAs as PEFT adapters, loaded through diffusers' loader: the mechanism when the UNet is not compiled.

A plain LoRA (kohya `lora_down`/`lora_up`/`alpha` or diffusers/PEFT `lora_A`/`lora_B`, on linear layers)
becomes the PEFT adapter `adapter_name(code)` of the UNet and both text encoders (`load_lora_weights`).
Adapters stay loaded between requests (up to `max_loras` per model, least recently used deleted first;
`LoadedModel.loras` records the file version of each, and a replaced file is loaded again), so going
from one request's set to the next changes only what differs: adapters already loaded are re-weighted
with `set_adapters`, and a request with no plain LoRA disables them, which gives the base model's
output bit for bit.

Each file goes on all or nothing: diffusers loads a LoRA's UNet, te1 and te2 parts one after the other
and keeps the first when a later one fails (a te2 tensor of the wrong shape fails after the UNet and te1
took theirs); here whatever the adapter got is deleted again, and the failure is a `ModelLoadError`
naming the file (files.Files.failed). Running out of memory is left to the engine (memory.py), after
the same taking back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from picserve.engine import loader, memory
from picserve.engine.lora.files import Files, SubFile, adapter_name, plain_state

__all__ = ["delete_adapter", "set_loras"]


def set_loras(files: Files, model: loader.LoadedModel, loras: Sequence[SubFile], max_loras: int) -> None:
    """`loras` enabled on `model` at their weights, each loaded unless its version is loaded already;
    beyond `max_loras`, the least recently used adapters this request does not need are deleted."""
    pipe = model.base
    if not loras:
        if model.loras:
            pipe.disable_lora()
        return
    for lora in loras:
        name = adapter_name(lora.code)
        if model.loras.get(name) != lora.version:
            if name in model.loras:
                del model.loras[name]
            delete_adapter(pipe, name)  # an older version of the file, or anything left under the name
            _load(files, pipe, lora, name)
            model.loras[name] = lora.version
        model.loras.move_to_end(name)
    # Least recently used adapters beyond the bound leave; the ones this request needs stay.
    wanted = {adapter_name(lora.code) for lora in loras}
    for name in [n for n in model.loras if n not in wanted][: max(0, len(model.loras) - max_loras)]:
        pipe.delete_adapters([name])
        del model.loras[name]
    pipe.enable_lora()
    pipe.set_adapters([adapter_name(lora.code) for lora in loras], adapter_weights=[lora.weight for lora in loras])


def _load(files: Files, pipe: Any, lora: SubFile, name: str) -> None:
    """Load one LoRA into the UNet and both text encoders, all or nothing.

    diffusers loads the parts one after the other and leaves those already loaded when a later one
    fails (a te2 tensor of the wrong shape fails after the UNet and te1 took theirs): whatever the
    adapter got is deleted again before the error goes on. A file whose keys match no layer of the
    model loads nothing without a word from diffusers: that is an error here too.
    """
    state = plain_state(files, pipe, lora)
    keys = len(state)
    with warnings.catch_warnings():  # peft: "Already found a peft_config attribute" is expected
        warnings.simplefilter("ignore")
        try:
            pipe.load_lora_weights(state, adapter_name=name)
        except BaseException as exc:
            delete_adapter(pipe, name)
            if memory.is_out_of_memory(exc) or not isinstance(exc, Exception):
                raise
            raise files.failed(lora, f"could not be applied: {loader.one_line(exc, files.models_dir)}") from exc
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise files.failed(lora, f"could not be applied: none of its {keys} keys matches a layer of this model")


def delete_adapter(pipe: Any, name: str) -> None:
    """Delete the LoRA adapter `name` from every component that holds it (none may)."""
    if any(name in names for names in pipe.get_list_adapters().values()):
        with warnings.catch_warnings():  # peft: "Adapter … was active which is now deleted": set_adapters follows
            warnings.simplefilter("ignore", UserWarning)
            pipe.delete_adapters([name])

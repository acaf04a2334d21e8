"""A request's LoRAs on a loaded main model: which mechanism applies each file. The engine's only entry to
LoRAs (engine/adapters.py calls `Loras.apply` for every request, with the LoRA files it resolved).

Three mechanisms, one module each:

- LyCORIS files (LoCon on convs, LoHa, LoKr, full) and DoRA in either layout are patched into the
  weights (lycoris.py; why: its docstring), whatever the UNet: `lycoris.is_lycoris` tells them apart;
- plain LoRAs (kohya or diffusers/PEFT layout, linear layers) become PEFT adapters through diffusers'
  loader (peft_adapters.py);
- with a compiled UNet (engine/acceleration.py: `PICSERVE_COMPILE`), a plain LoRA's UNet part goes
  instead into one of the UNet's hot-swap slots and its text-encoder parts stay PEFT adapters
  (slots.py); a compiled UNet without slots (`PICSERVE_LORA_SLOTS=0`) refuses plain LoRAs, since an
  adapter would change its graph.

Plain LoRAs stay loaded between requests, switched by their weights; patched files stay patched while
consecutive requests use the same set. A request without LoRAs gives the base model's output bit for
bit. With fused QKV projections (acceleration.py), the UNet is unfused while a request's LoRAs (adapters
or patches) are applied, since the fused layers would not see them, and fused again, from the base
weights restored, for a request without any. A LoRA at weight 0 never gets here (engine/adapters.py
skips it).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from picserve import errors
from picserve.engine import acceleration, loader
from picserve.engine.lora import lycoris, peft_adapters, slots
from picserve.engine.lora.files import Files, SubFile, adapter_name

__all__ = ["Loras", "lora_slots"]


class Loras:
    """The LoRAs of requests, applied to loaded main models through `files` (engine/adapters.py).

    `max_loras`: plain LoRAs kept loaded per main model between requests, least recently used evicted first.
    """

    def __init__(self, files: Files, max_loras: int = 8) -> None:
        self.files = files
        self.max_loras = max_loras
        #: the LyCORIS files patched into each loaded model (gone with the model)
        self._patchers: weakref.WeakKeyDictionary[loader.LoadedModel, lycoris.Patcher] = weakref.WeakKeyDictionary()

    def apply(self, model: loader.LoadedModel, loras: Sequence[SubFile]) -> None:
        """Exactly `loras` on `model`, each by its mechanism (see the module docstring); the plain LoRAs of
        earlier requests stay loaded but disabled or at weight 0. Each file goes on all or nothing: one
        that fails is taken back and raises a `ModelLoadError` naming it."""
        patched = [sub for sub in loras if self._is_patched(model, sub)]
        plain = [sub for sub in loras if sub not in patched]
        pipe = model.base
        held = lora_slots(pipe)
        if plain and held is None and acceleration.compiled(pipe):  # an adapter would change the graph
            raise errors.ModelLoadError(
                f"LoRA {plain[0].code!r} could not be applied: this worker's compiled UNet has no LoRA slots "
                "(PICSERVE_LORA_SLOTS=0); the main model was left unchanged. Submit the task without it, or "
                "ask the operator for LoRA slots"
            )
        if loras:  # fused q/k/v projections would not see the LoRAs' changes (acceleration.py)
            acceleration.set_fused(pipe, False)
        if held is None:
            peft_adapters.set_loras(self.files, model, plain, self.max_loras)
        else:
            slots.set_loras(self.files, model, held, plain, self.max_loras)
        self._patch(model, patched)
        if not loras:  # fused again from the base weights (the patches taken back above)
            acceleration.set_fused(pipe, True)

    def patched(self, model: loader.LoadedModel) -> list[str]:
        """The LyCORIS files patched into `model` now, named as LoRA adapters are."""
        patcher = self._patchers.get(model)
        return [adapter_name(ident.split("\0")[0]) for ident, _ in patcher.applied] if patcher else []

    def _forget(self, model: loader.LoadedModel, name: str) -> None:
        """Unload the LoRA adapter `name` from `model`: its PEFT adapters, or its hot-swap slot (left at
        weight 0 until it is reused) and its text-encoder adapters."""
        held = lora_slots(model.base)
        if held is None:
            model.loras.pop(name, None)
            peft_adapters.delete_adapter(model.base, name)
        else:
            slots.forget(model, held, name)

    # --- LyCORIS ------------------------------------------------------------------------------------
    def _is_patched(self, model: loader.LoadedModel, sub: SubFile) -> bool:
        """Whether a LoRA file is patched in (lycoris.py) rather than loaded as a PEFT adapter. A file
        that cannot be read takes its older version's adapter with it (a replaced file that is damaged)."""
        try:
            return lycoris.is_lycoris(self.files.contents(sub))
        except errors.ModelLoadError:
            name = adapter_name(sub.code)
            if name in model.loras and model.loras[name] != sub.version:
                self._forget(model, name)
            raise

    def _patch(self, model: loader.LoadedModel, loras: Sequence[SubFile]) -> None:
        """The model's weights patched with exactly `loras` (the base weights when there are none)."""
        patcher = self._patchers.get(model)
        if patcher is None:
            if not loras:
                return
            patcher = self._patchers[model] = lycoris.Patcher(model.base)
        by_id = {_file_id(sub): sub for sub in loras}
        try:
            patcher.apply(
                [
                    (ident, lycoris.kohya_layout(self.files.contents(sub), _peft_alphas(sub.path)), sub.weight)
                    for ident, sub in by_id.items()
                ]
            )
        except lycoris.PatchError as exc:
            sub = by_id[exc.file]
            raise self.files.failed(sub, f"could not be applied: {exc}") from exc


def lora_slots(pipe: Any) -> slots.LoraSlots | None:
    """`pipe`'s LoRA hot-swap slots, or None when its LoRAs are plain PEFT adapters (no compile)."""
    state = acceleration.prepared(pipe)
    return state.slots if state is not None else None


def _peft_alphas(path: Path) -> dict[str, float]:
    """PEFT's lora_alpha per component, from a diffusers-written file's metadata (none: {})."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return lycoris.peft_alphas(f.metadata())
    except Exception:  # read a moment ago: a file replaced since is read again next time
        return {}


def _file_id(sub: SubFile) -> str:
    """A LyCORIS file and its version: the code, then what changes when the file is replaced."""
    return f"{sub.code}\0{sub.path}\0{sub.version}"

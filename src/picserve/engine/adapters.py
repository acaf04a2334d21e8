"""Sub-models on a loaded main model: LoRAs, textual-inversion embeddings, hypernetworks.

Two LoRA mechanisms: plain LoRAs (kohya or diffusers/PEFT layout, linear layers) become PEFT adapters
through diffusers' loader; LyCORIS files (LoCon on convs, LoHa, LoKr, full) and kohya-layout DoRA are
patched into the weights by lycoris.py (why: its docstring). A LoRA or hypernetwork at weight 0 is not
applied at all, so the image is the base model's bit for bit.

LoRAs stay loaded between requests (up to `max_loras` per model, least recently used evicted) and their
state dicts stay cached in memory (up to `max_cached_files`), so going from one request's LoRA set to the
next changes only what differs: adapters already loaded are re-weighted with `set_adapters`, and a
request with no LoRA disables them, which gives the base model's output bit for bit. Embeddings and
hypernetworks are applied for one request and always removed after it.

With a compiled UNet (acceleration.py: `PICSERVE_COMPILE`), a LoRA's UNet part goes instead into one of
the UNet's hot-swap slots (diffusers' hot-swap), where it stays until its slot is needed for another
file (least recently used first); a request weights the slots, those it does not use at 0, which gives
the base model's output bit for bit. Neither changes the compiled graph. Its text-encoder parts stay
PEFT adapters (the text encoders are not compiled). A request may then apply at most as many LoRAs with
a UNet part as there are slots, each of a rank up to the slots' (`PICSERVE_LORA_SLOTS`,
`PICSERVE_LORA_MAX_RANK`); beyond that it fails with a `ModelLoadError` that says so. With fused QKV
projections (acceleration.py), the UNet is unfused while a request's LoRAs (adapters or LyCORIS patches)
are applied, since the fused layers would not see them, and fused again for a request without any.

Each sub-model goes on all or nothing: diffusers loads a LoRA's UNet, te1 and te2 parts, and an
embedding's `clip_l` and `clip_g` parts, one after the other, and keeps the first when a later one fails;
here the parts already applied are taken back, and the failure is a `ModelLoadError` naming the sub-model
and its file, and saying what to do (a file removed, damaged, or whose keys fit nothing of the model).
Running out of memory is left to the engine (memory.py), after the same taking back.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picserve import catalog as catalog_module
from picserve import domain, errors
from picserve.engine import acceleration, hypernetwork, loader, lycoris, memory

__all__ = ["Adapters"]

_KIND_NAMES = {"lora": "LoRA", "embedding": "embedding", "hypernetwork": "hypernetwork"}


@dataclass(frozen=True)
class _Resolved:
    kind: str
    code: str
    path: Path
    weight: float
    version: tuple[int, int]  # (mtime_ns, size): a replaced file is loaded again


def _adapter_name(code: str) -> str:
    # PEFT adapter names end up in module paths: keep them to identifier characters.
    return "lora_" + re.sub(r"\W", "_", code)


class Adapters:
    """The sub-models of requests, applied to loaded main models.

    `max_loras`: LoRAs kept loaded per main model between requests, least recently used evicted first.
    `max_cached_files`: sub-model files whose contents stay in memory, least recently used dropped first.
    """

    def __init__(self, catalog: catalog_module.Catalog, max_loras: int = 8, max_cached_files: int = 16) -> None:
        self.catalog = catalog
        self.max_loras = max_loras
        self.max_cached_files = max_cached_files
        # (path, version) → the file's contents: a state dict, or a hypernetwork's modules
        self._file_contents: OrderedDict[tuple[str, tuple[int, int]], Any] = OrderedDict()
        self._lock = threading.Lock()
        #: the LyCORIS files patched into each loaded model (gone with the model)
        self._patchers: weakref.WeakKeyDictionary[loader.LoadedModel, lycoris.Patcher] = weakref.WeakKeyDictionary()

    @contextlib.contextmanager
    def applied(self, model: loader.LoadedModel, sub_models: tuple[domain.SubModel, ...]) -> Iterator[None]:
        """Everything `sub_models` asks for, on `model`, for one request.

        Each sub-model goes on all or nothing: one that fails half-way (a LoRA whose second text encoder
        part does not fit, an embedding whose `clip_g` part does not) takes back the parts it had applied
        and raises a `ModelLoadError` naming it. Embeddings and hypernetworks come off when the block
        ends, however it ends; LoRAs stay loaded but only the next request's set is enabled.
        """
        # weight 0: not applied at all (a DoRA or a hypernetwork at 0 would still change the image)
        resolved = [self._resolve(sub) for sub in sub_models if sub.kind == "embedding" or sub.weight != 0]
        loras = [sub for sub in resolved if sub.kind == "lora"]
        patched = [sub for sub in loras if self._is_patched(model, sub)]
        plain = [sub for sub in loras if sub not in patched]
        pipe = model.base
        slots = acceleration.lora_slots(pipe)
        if plain and slots is None and acceleration.compiled(pipe):  # an adapter would change the graph
            raise errors.ModelLoadError(
                f"LoRA {plain[0].code!r} could not be applied: this worker's compiled UNet has no LoRA slots "
                "(PICSERVE_LORA_SLOTS=0); the main model was left unchanged. Submit the task without it, or "
                "ask the operator for LoRA slots"
            )
        if loras:  # fused q/k/v projections would not see the LoRAs' changes (acceleration.py)
            acceleration.set_fused(pipe, False)
        if slots is None:
            self._set_loras(model, plain)
        else:
            self._set_slotted_loras(model, slots, plain)
        self._patch(model, patched)
        if not loras:  # fused again from the base weights (the patches taken back above)
            acceleration.set_fused(pipe, True)
        with contextlib.ExitStack() as stack:  # unwinds in reverse, every exit even when one raises
            for emb in (sub for sub in resolved if sub.kind == "embedding"):
                stack.enter_context(self._embedding(pipe, emb))
            width = pipe.unet.config.cross_attention_dim
            networks = [(self._hypernetwork(sub, width), sub.weight) for sub in resolved if sub.kind == "hypernetwork"]
            stack.enter_context(hypernetwork.applied(pipe.unet, networks))
            yield

    # --- files ------------------------------------------------------------------------------------
    def _resolve(self, sub: domain.SubModel) -> _Resolved:
        entry = self.catalog.get(sub.kind, sub.code)
        if entry is None:  # the API checked it when the task was submitted: it went away since
            raise _failed(sub.kind, sub.code, "is no longer in the models folder", self._where(sub.kind))
        try:
            stat = entry.path.stat()
        except OSError as exc:  # removed since the models folder was last scanned
            raise _failed(
                sub.kind,
                sub.code,
                f"could not be read ({loader.one_line(exc, self.catalog.models_dir)})",
                self._where(sub.kind, entry.path),
            ) from exc
        return _Resolved(sub.kind, sub.code, entry.path, sub.weight, (stat.st_mtime_ns, stat.st_size))

    def _where(self, kind: str, path: Path | None = None) -> str:
        """`models/lora/x.safetensors` (or `models/lora/`): where in the models folder, for messages."""
        return f"{self.catalog.models_dir.name}/{kind}/{path.name if path else ''}"

    def _file(self, sub: _Resolved) -> Any:
        """A sub-model file's contents, from the bounded in-memory cache when possible."""
        key = (str(sub.path), sub.version)
        with self._lock:
            if key in self._file_contents:
                self._file_contents.move_to_end(key)
                return self._file_contents[key]
        contents = _read(sub, self._where(sub.kind, sub.path), self.catalog.models_dir)
        with self._lock:
            self._file_contents[key] = contents
            while len(self._file_contents) > self.max_cached_files:
                self._file_contents.popitem(last=False)
        return contents

    # --- LoRA ---------------------------------------------------------------------------------------
    def _set_loras(self, model: loader.LoadedModel, loras: list[_Resolved]) -> None:
        pipe = model.base
        if not loras:
            if model.loras:
                pipe.disable_lora()
            return
        for lora in loras:
            name = _adapter_name(lora.code)
            if model.loras.get(name) != lora.version:
                if name in model.loras:
                    del model.loras[name]
                _delete_adapter(pipe, name)  # an older version of the file, or anything left under the name
                self._load_lora(pipe, lora, name)
                model.loras[name] = lora.version
            model.loras.move_to_end(name)
        # Least recently used adapters beyond the bound leave; the ones this request needs stay.
        wanted = {_adapter_name(lora.code) for lora in loras}
        for name in [n for n in model.loras if n not in wanted][: max(0, len(model.loras) - self.max_loras)]:
            pipe.delete_adapters([name])
            del model.loras[name]
        pipe.enable_lora()
        pipe.set_adapters([_adapter_name(lora.code) for lora in loras], adapter_weights=[lora.weight for lora in loras])

    def _load_lora(self, pipe: Any, lora: _Resolved, name: str) -> None:
        """Load one LoRA into the UNet and both text encoders, all or nothing.

        diffusers loads the parts one after the other and leaves those already loaded when a later one
        fails (a te2 tensor of the wrong shape fails after the UNet and te1 took theirs): whatever the
        adapter got is deleted again before the error goes on. A file whose keys match no layer of the
        model loads nothing without a word from diffusers: that is an error here too.
        """
        state = self._lora_state(pipe, lora)
        keys = len(state)
        with warnings.catch_warnings():  # peft: "Already found a peft_config attribute" is expected
            warnings.simplefilter("ignore")
            try:
                pipe.load_lora_weights(state, adapter_name=name)
            except BaseException as exc:
                _delete_adapter(pipe, name)
                if memory.is_out_of_memory(exc) or not isinstance(exc, Exception):
                    raise
                where = self._where("lora", lora.path)
                raise _failed(
                    "lora", lora.code, f"could not be applied: {loader.one_line(exc, self.catalog.models_dir)}", where
                ) from exc
        if not any(name in names for names in pipe.get_list_adapters().values()):
            raise _failed(
                "lora",
                lora.code,
                f"could not be applied: none of its {keys} keys matches a layer of this model",
                self._where("lora", lora.path),
            )

    def _lora_state(self, pipe: Any, lora: _Resolved) -> dict[str, Any]:
        """A copy of a plain LoRA's state dict (diffusers pops keys from the dict it is given), refused
        when some of its layers match no layer of the model: diffusers would load the rest and skip
        these without a word; here it is all or nothing."""
        state = dict(self._file(lora))
        missing = lycoris.unmatched_layers(state, pipe)
        if missing:
            listed = ", ".join(missing[:8]) + (f" … ({len(missing) - 8} more)" if len(missing) > 8 else "")
            raise _failed(
                "lora",
                lora.code,
                f"could not be applied: {len(missing)} of its layers match no layer of this model "
                f"(made for another base model, or an unknown naming): {listed}",
                self._where("lora", lora.path),
            )
        return state

    def _forget(self, model: loader.LoadedModel, name: str) -> None:
        """Unload the LoRA adapter `name` from `model`: its PEFT adapters, or its hot-swap slot (left at
        weight 0 until it is reused) and its text-encoder adapters."""
        model.loras.pop(name, None)
        slots = acceleration.lora_slots(model.base)
        if slots is None:
            _delete_adapter(model.base, name)
            return
        if name in slots.holding:
            slots.holding[slots.holding.index(name)] = None
        for encoder in _encoders(model.base):
            _delete_encoder_adapter(encoder, name)

    # --- LoRA with a compiled UNet: hot-swap slots (acceleration.py) --------------------------------------
    def _set_slotted_loras(
        self, model: loader.LoadedModel, slots: acceleration.LoraSlots, loras: list[_Resolved]
    ) -> None:
        """`loras` on a compiled UNet: each file's UNet part in a slot (hot-swapped in unless a slot holds
        that version already), its text-encoder parts PEFT adapters of the encoders; the slots weighted
        for this request, every other slot at 0, so that the graph never changes."""
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        wanted = {_adapter_name(lora.code): lora.weight for lora in loras}
        for lora in loras:
            name = _adapter_name(lora.code)
            if model.loras.get(name) != lora.version:
                self._forget(model, name)  # an older version of the file, or nothing
                self._load_slotted(model, slots, lora, name, set(wanted))
                model.loras[name] = lora.version
            model.loras.move_to_end(name)
        # Files with text-encoder parts only hold no slot: the least recently used beyond the bound leave.
        unslotted = [name for name in model.loras if name not in wanted and name not in slots.holding]
        for name in unslotted[: max(0, len(unslotted) - self.max_loras)]:
            self._forget(model, name)
        slots.set_weights({i: wanted[name] for i, name in enumerate(slots.holding) if name in wanted})
        for encoder in _encoders(model.base):
            names = [name for name in wanted if name in _encoder_adapters(encoder)]
            if names:
                set_adapters_for_text_encoder(names, encoder, [wanted[name] for name in names])
                enable_lora_for_text_encoder(encoder)
            elif _encoder_adapters(encoder):
                disable_lora_for_text_encoder(encoder)

    def _load_slotted(
        self, model: loader.LoadedModel, slots: acceleration.LoraSlots, lora: _Resolved, name: str, wanted: set[str]
    ) -> None:
        """Load one LoRA for a compiled UNet, all or nothing: its UNet part into a free slot (or the least
        recently used one this request does not need), its text-encoder parts as adapters `name`."""
        pipe = model.base
        state = self._lora_state(pipe, lora)
        keys, index = len(state), None
        where = self._where("lora", lora.path)
        with warnings.catch_warnings():  # peft: "Already found a peft_config attribute" is expected
            warnings.simplefilter("ignore")
            try:
                converted, alphas, metadata = pipe.lora_state_dict(
                    state, unet_config=pipe.unet.config, return_lora_metadata=True
                )
                if any(key.startswith("unet.") for key in converted):
                    index = self._free_slot(model, slots, lora, wanted)
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
                self._forget(model, name)
                if memory.is_out_of_memory(exc) or not isinstance(exc, Exception):
                    raise
                raise _failed(
                    "lora", lora.code, f"could not be applied: {loader.one_line(exc, self.catalog.models_dir)}", where
                ) from exc
        if index is None and not any(name in _encoder_adapters(encoder) for encoder in _encoders(pipe)):
            raise _failed(
                "lora", lora.code, f"could not be applied: none of its {keys} keys matches a layer of this model", where
            )

    def _free_slot(
        self, model: loader.LoadedModel, slots: acceleration.LoraSlots, lora: _Resolved, wanted: set[str]
    ) -> int:
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
            self._forget(model, held)
        return index

    # --- LyCORIS ------------------------------------------------------------------------------------
    def _is_patched(self, model: loader.LoadedModel, sub: _Resolved) -> bool:
        """Whether a LoRA file is patched in (lycoris.py) rather than loaded as a PEFT adapter. A file
        that cannot be read takes its older version's adapter with it (a replaced file that is damaged)."""
        try:
            return lycoris.is_lycoris(self._file(sub))
        except errors.ModelLoadError:
            name = _adapter_name(sub.code)
            if name in model.loras and model.loras[name] != sub.version:
                self._forget(model, name)
            raise

    def _patch(self, model: loader.LoadedModel, files: list[_Resolved]) -> None:
        """The model's weights patched with exactly `files` (the base weights when there are none)."""
        patcher = self._patchers.get(model)
        if patcher is None:
            if not files:
                return
            patcher = self._patchers[model] = lycoris.Patcher(model.base)
        by_id = {_file_id(sub): sub for sub in files}
        try:
            patcher.apply(
                [
                    (ident, lycoris.kohya_layout(self._file(sub), _peft_alphas(sub.path)), sub.weight)
                    for ident, sub in by_id.items()
                ]
            )
        except lycoris.PatchError as exc:
            sub = by_id[exc.file]
            raise _failed("lora", sub.code, f"could not be applied: {exc}", self._where("lora", sub.path)) from exc

    def patched(self, model: loader.LoadedModel) -> list[str]:
        """The LyCORIS files patched into `model` now, named as LoRA adapters are."""
        patcher = self._patchers.get(model)
        return [_adapter_name(ident.split("\0")[0]) for ident, _ in patcher.applied] if patcher else []

    # --- embeddings ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _embedding(self, pipe: Any, emb: _Resolved) -> Iterator[None]:
        """One SDXL embedding: `clip_l` into the first tokenizer and text encoder, `clip_g` into the second.

        All or nothing, and removed when the block ends: each part takes back what it added, in reverse.
        """
        vectors = self._file(emb)
        parts = (("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
        where = self._where("embedding", emb.path)
        for key, _, _ in parts:  # checked before anything is touched
            if not isinstance(vectors, Mapping) or not isinstance(vectors.get(key), torch.Tensor):
                raise _failed("embedding", emb.code, f"has no {key} vectors (not an SDXL embedding)", where)
        with contextlib.ExitStack() as stack:
            for key, tokenizer, encoder in parts:
                stack.enter_context(_textual_inversion(pipe, emb.code, where, key, vectors[key], tokenizer, encoder))
            yield

    # --- hypernetworks ------------------------------------------------------------------------------
    def _hypernetwork(self, sub: _Resolved, width: int) -> hypernetwork.Hypernetwork:
        """A hypernetwork's modules, checked on a context of the UNet's width: one whose layers do not
        chain fails here, naming it, rather than in the middle of denoising."""
        modules: hypernetwork.Hypernetwork = self._file(sub)
        where = self._where("hypernetwork", sub.path)
        for module in modules.get(width, ()):  # a network without this width does nothing (A1111)
            parameter = next(module.parameters())
            probe = torch.zeros(1, 1, width, device=parameter.device, dtype=parameter.dtype)
            try:
                with torch.no_grad():
                    shape = module(probe).shape
            except Exception as exc:
                if memory.is_out_of_memory(exc):
                    raise
                raise _failed(
                    "hypernetwork",
                    sub.code,
                    f"could not be applied: {loader.one_line(exc, self.catalog.models_dir)}",
                    where,
                ) from exc
            if shape != probe.shape:
                raise _failed(
                    "hypernetwork",
                    sub.code,
                    f"could not be applied: its {width}-wide modules output {shape[-1]}",
                    where,
                )
        return modules


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


def _file_id(sub: _Resolved) -> str:
    """A LyCORIS file and its version: the code, then what changes when the file is replaced."""
    return f"{sub.code}\0{sub.path}\0{sub.version}"


def _failed(kind: str, code: str, what: str, where: str) -> errors.ModelLoadError:
    """The error for a sub-model that cannot be used: what went wrong, and what the client and the operator
    can do about it (the main model is left as it was)."""
    return errors.ModelLoadError(
        f"{_KIND_NAMES[kind]} {code!r} {what}; the main model was left unchanged. Submit the task without it, "
        f"or ask the operator to restore or replace {where} (ListModels shows what is installed)"
    )


def _delete_adapter(pipe: Any, name: str) -> None:
    """Delete the LoRA adapter `name` from every component that holds it (none may)."""
    if any(name in names for names in pipe.get_list_adapters().values()):
        with warnings.catch_warnings():  # peft: "Adapter … was active which is now deleted": set_adapters follows
            warnings.simplefilter("ignore", UserWarning)
            pipe.delete_adapters([name])


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


@contextlib.contextmanager
def _textual_inversion(
    pipe: Any, code: str, where: str, key: str, vectors: Any, tokenizer: Any, encoder: Any
) -> Iterator[None]:
    """`vectors` as the token `code` (and `code_1`, `code_2`… for the extra rows) in one tokenizer and
    text encoder; on failure, and when the block ends, both are as they were before."""
    vocabulary, rows = len(tokenizer), encoder.get_input_embeddings().weight.shape[0]
    try:
        pipe.load_textual_inversion(vectors, token=code, tokenizer=tokenizer, text_encoder=encoder)
    except BaseException as exc:
        _restore_vocabulary(pipe, tokenizer, encoder, vocabulary, rows)
        if memory.is_out_of_memory(exc) or not isinstance(exc, Exception):
            raise
        raise _failed("embedding", code, f"could not be applied ({key}): {loader.one_line(exc)}", where) from exc
    try:
        yield
    finally:
        _restore_vocabulary(pipe, tokenizer, encoder, vocabulary, rows)


def _restore_vocabulary(pipe: Any, tokenizer: Any, encoder: Any, vocabulary: int, rows: int) -> None:
    """Remove the tokens added to `tokenizer` beyond its first `vocabulary` (and their embedding rows),
    and bring the encoder's embedding matrix back to `rows`."""
    added = [token.content for token_id, token in tokenizer.added_tokens_decoder.items() if token_id >= vocabulary]
    if added:
        pipe.unload_textual_inversion(tokens=added, tokenizer=tokenizer, text_encoder=encoder)
    if encoder.get_input_embeddings().weight.shape[0] != rows:  # resized, then failed before adding tokens
        encoder.resize_token_embeddings(rows)


def _read(sub: _Resolved, where: str, models_dir: Path) -> Any:
    """A state dict (LoRA, embedding), or a hypernetwork's modules."""
    try:
        if sub.kind == "hypernetwork":
            return hypernetwork.load(sub.path)
        if sub.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(sub.path))
        return torch.load(sub.path, map_location="cpu", weights_only=True)  # never an arbitrary unpickle
    except Exception as exc:  # removed, damaged, or a hypernetwork whose layers cannot be built
        if memory.is_out_of_memory(exc):
            raise
        raise _failed(sub.kind, sub.code, f"could not be read ({loader.one_line(exc, models_dir)})", where) from exc

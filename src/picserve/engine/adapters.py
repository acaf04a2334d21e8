"""Sub-models on a loaded main model: LoRAs, textual-inversion embeddings, hypernetworks.

LoRAs stay loaded between requests (up to `max_loras` per model, least recently used evicted) and their
state dicts stay cached in memory (up to `max_cached`), so going from one request's LoRA set to the
next changes only what differs: adapters already loaded are re-weighted with `set_adapters`, and a
request with no LoRA disables them, which gives the base model's output bit for bit. Embeddings and
hypernetworks are applied for one request and always removed after it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from picserve import catalog as catalog_module
from picserve import domain, errors
from picserve.engine import hypernetwork

__all__ = ["Adapters"]


@dataclass(frozen=True)
class _Resolved:
    kind: str
    code: str
    path: Path
    weight: float
    version: tuple  # (mtime_ns, size): a replaced file is loaded again


def _adapter_name(code: str) -> str:
    # PEFT adapter names end up in module paths: keep them to identifier characters.
    return "lora_" + re.sub(r"\W", "_", code)


class Adapters:
    def __init__(self, catalog: catalog_module.Catalog, max_loras: int = 8, max_cached: int = 16):
        self.catalog = catalog
        self.max_loras = max_loras
        self.max_cached = max_cached
        self._files: OrderedDict[tuple, object] = OrderedDict()  # (path, version) → loaded file contents
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def applied(self, model, sub_models: tuple[domain.SubModel, ...]) -> Iterator[None]:
        """Everything `sub_models` asks for, on `model` (a loader.LoadedModel), for one request."""
        resolved = [self._resolve(s) for s in sub_models]
        self._set_loras(model, [r for r in resolved if r.kind == "lora"])
        with (
            self._embeddings(model.base, [r for r in resolved if r.kind == "embedding"]),
            hypernetwork.applied(
                model.base.unet, [(self._file(r), r.weight) for r in resolved if r.kind == "hypernetwork"]
            ),
        ):
            yield

    # --- files ------------------------------------------------------------------------------------
    def _resolve(self, sub: domain.SubModel) -> _Resolved:
        entry = self.catalog.get(sub.kind, sub.code)
        if entry is None:
            raise errors.GenerationError(f"{sub.kind} {sub.code!r} is no longer in the models folder")
        stat = entry.path.stat()
        return _Resolved(sub.kind, sub.code, entry.path, sub.weight, (stat.st_mtime_ns, stat.st_size))

    def _file(self, r: _Resolved):
        """A sub-model file's contents, from the bounded in-memory cache when possible."""
        key = (str(r.path), r.version)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        contents = _read(r)
        with self._lock:
            self._files[key] = contents
            while len(self._files) > self.max_cached:
                self._files.popitem(last=False)
        return contents

    # --- LoRA ---------------------------------------------------------------------------------------
    def _set_loras(self, model, loras: list[_Resolved]) -> None:
        pipe = model.base
        if not loras:
            if model.loras:
                pipe.disable_lora()
            return
        for lora in loras:
            name = _adapter_name(lora.code)
            if model.loras.get(name) != lora.version:
                if name in model.loras:
                    pipe.delete_adapters([name])
                    del model.loras[name]
                with warnings.catch_warnings():  # peft: "Already found a peft_config attribute" is expected
                    warnings.simplefilter("ignore")
                    try:
                        pipe.load_lora_weights(dict(self._file(lora)), adapter_name=name)
                    except (ValueError, KeyError, RuntimeError) as exc:
                        raise errors.GenerationError(f"LoRA {lora.code!r} could not be applied: {exc}") from exc
                model.loras[name] = lora.version
            model.loras.move_to_end(name)
        # Least recently used adapters beyond the bound leave; the ones this request needs stay.
        wanted = {_adapter_name(x.code) for x in loras}
        for name in [n for n in model.loras if n not in wanted][: max(0, len(model.loras) - self.max_loras)]:
            pipe.delete_adapters([name])
            del model.loras[name]
        pipe.enable_lora()
        pipe.set_adapters([_adapter_name(x.code) for x in loras], adapter_weights=[x.weight for x in loras])

    # --- embeddings ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _embeddings(self, pipe, embeddings: list[_Resolved]) -> Iterator[None]:
        loaded: list[list[str]] = []
        try:
            for emb in embeddings:
                vectors = self._file(emb)
                for key, tokenizer, encoder in (
                    ("clip_l", pipe.tokenizer, pipe.text_encoder),
                    ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2),
                ):
                    if key not in vectors:
                        raise errors.GenerationError(f"embedding {emb.code!r} has no {key} vectors (not SDXL)")
                    pipe.load_textual_inversion(vectors[key], token=emb.code, tokenizer=tokenizer, text_encoder=encoder)
                count = vectors["clip_l"].shape[0]
                # diffusers names the extra vectors token_1, token_2…; all must go to unload completely.
                loaded.append([emb.code] + [f"{emb.code}_{i}" for i in range(1, count)])
            yield
        finally:
            for tokens in reversed(loaded):
                for tokenizer, encoder in (
                    (pipe.tokenizer, pipe.text_encoder),
                    (pipe.tokenizer_2, pipe.text_encoder_2),
                ):
                    pipe.unload_textual_inversion(tokens=tokens, tokenizer=tokenizer, text_encoder=encoder)


def _read(r: _Resolved):
    if r.kind == "hypernetwork":
        return hypernetwork.load(r.path)
    try:
        if r.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(r.path))
        data = torch.load(r.path, map_location="cpu", weights_only=True)  # never an arbitrary unpickle
    except Exception as exc:
        raise errors.GenerationError(f"{r.kind} {r.code!r} could not be read: {exc}") from exc
    return data

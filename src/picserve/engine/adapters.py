"""Sub-models on a loaded main model: LoRAs, textual-inversion embeddings, hypernetworks.

LoRAs stay loaded between requests (up to `max_loras` per model, least recently used evicted) and their
state dicts stay cached in memory (up to `max_cached_files`), so going from one request's LoRA set to the
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
from typing import Any

import torch

from picserve import catalog as catalog_module
from picserve import domain, errors
from picserve.engine import hypernetwork, loader

__all__ = ["Adapters"]


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

    @contextlib.contextmanager
    def applied(self, model: loader.LoadedModel, sub_models: tuple[domain.SubModel, ...]) -> Iterator[None]:
        """Everything `sub_models` asks for, on `model`, for one request."""
        resolved = [self._resolve(sub) for sub in sub_models]
        self._set_loras(model, [sub for sub in resolved if sub.kind == "lora"])
        with (
            self._embeddings(model.base, [sub for sub in resolved if sub.kind == "embedding"]),
            hypernetwork.applied(
                model.base.unet, [(self._file(sub), sub.weight) for sub in resolved if sub.kind == "hypernetwork"]
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

    def _file(self, sub: _Resolved) -> Any:
        """A sub-model file's contents, from the bounded in-memory cache when possible."""
        key = (str(sub.path), sub.version)
        with self._lock:
            if key in self._file_contents:
                self._file_contents.move_to_end(key)
                return self._file_contents[key]
        contents = _read(sub)
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
        wanted = {_adapter_name(lora.code) for lora in loras}
        for name in [n for n in model.loras if n not in wanted][: max(0, len(model.loras) - self.max_loras)]:
            pipe.delete_adapters([name])
            del model.loras[name]
        pipe.enable_lora()
        pipe.set_adapters([_adapter_name(lora.code) for lora in loras], adapter_weights=[lora.weight for lora in loras])

    # --- embeddings ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _embeddings(self, pipe: Any, embeddings: list[_Resolved]) -> Iterator[None]:
        loaded_tokens: list[list[str]] = []  # per embedding, every token it added
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
                loaded_tokens.append([emb.code] + [f"{emb.code}_{i}" for i in range(1, count)])
            yield
        finally:
            for tokens in reversed(loaded_tokens):
                for tokenizer, encoder in (
                    (pipe.tokenizer, pipe.text_encoder),
                    (pipe.tokenizer_2, pipe.text_encoder_2),
                ):
                    pipe.unload_textual_inversion(tokens=tokens, tokenizer=tokenizer, text_encoder=encoder)


def _read(sub: _Resolved) -> Any:
    """A state dict (LoRA, embedding), or a hypernetwork's modules."""
    if sub.kind == "hypernetwork":
        return hypernetwork.load(sub.path)
    try:
        if sub.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(sub.path))
        return torch.load(sub.path, map_location="cpu", weights_only=True)  # never an arbitrary unpickle
    except Exception as exc:
        raise errors.GenerationError(f"{sub.kind} {sub.code!r} could not be read: {exc}") from exc

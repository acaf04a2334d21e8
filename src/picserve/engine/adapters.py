"""Sub-models on a loaded main model for one request: LoRAs, textual-inversion embeddings, hypernetworks.

This module resolves a request's sub-models in the models folder, keeps their files' contents in memory
(up to `max_cached_files`, least recently used dropped first) and applies embeddings and hypernetworks
itself; LoRAs go to lora/apply.py, which picks their mechanism (PEFT adapters, hot-swap slots of a
compiled UNet, or LyCORIS patches: the lora package's docstring) and keeps them loaded between requests
(up to `max_loras` per model). A LoRA or hypernetwork at weight 0 is not applied at all, so the image is
the base model's bit for bit. Embeddings and hypernetworks are applied for one request and always
removed after it.

Each sub-model goes on all or nothing: diffusers loads a LoRA's UNet, te1 and te2 parts, and an
embedding's `clip_l` and `clip_g` parts, one after the other, and keeps the first when a later one fails;
here the parts already applied are taken back, and the failure is a `ModelLoadError` naming the sub-model
and its file, and saying what to do (a file removed, damaged, or whose keys fit nothing of the model).
Running out of memory is left to the engine (memory.py), after the same taking back.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picserve import catalog as catalog_module
from picserve import domain, errors
from picserve.engine import hypernetwork, loader, memory
from picserve.engine.lora.apply import Loras
from picserve.engine.lora.files import SubFile

__all__ = ["Adapters"]

_KIND_NAMES = {"lora": "LoRA", "embedding": "embedding", "hypernetwork": "hypernetwork"}


@dataclass(frozen=True)
class _Resolved:
    kind: str
    code: str
    path: Path
    weight: float
    version: tuple[int, int]  # (mtime_ns, size): a replaced file is loaded again


class Adapters:
    """The sub-models of requests, applied to loaded main models.

    `max_loras`: LoRAs kept loaded per main model between requests, least recently used evicted first.
    `max_cached_files`: sub-model files whose contents stay in memory, least recently used dropped first.
    Also the `lora.files.Files` the LoRA mechanisms read their files through (`contents`, `failed`).
    """

    def __init__(self, catalog: catalog_module.Catalog, max_loras: int = 8, max_cached_files: int = 16) -> None:
        self.catalog = catalog
        self.max_cached_files = max_cached_files
        # (path, version) → the file's contents: a state dict, or a hypernetwork's modules
        self._file_contents: OrderedDict[tuple[str, tuple[int, int]], Any] = OrderedDict()
        self._lock = threading.Lock()
        #: the LoRAs: applied by the mechanism each file needs (lora/apply.py)
        self._loras = Loras(self, max_loras=max_loras)

    @property
    def max_loras(self) -> int:
        return self._loras.max_loras

    @max_loras.setter
    def max_loras(self, value: int) -> None:
        self._loras.max_loras = value

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
        self._loras.apply(model, [sub for sub in resolved if sub.kind == "lora"])
        pipe = model.base
        with contextlib.ExitStack() as stack:  # unwinds in reverse, every exit even when one raises
            for emb in (sub for sub in resolved if sub.kind == "embedding"):
                stack.enter_context(self._embedding(pipe, emb))
            width = pipe.unet.config.cross_attention_dim
            networks = [(self._hypernetwork(sub, width), sub.weight) for sub in resolved if sub.kind == "hypernetwork"]
            stack.enter_context(hypernetwork.applied(pipe.unet, networks))
            yield

    def patched(self, model: loader.LoadedModel) -> list[str]:
        """The LyCORIS files patched into `model` now, named as LoRA adapters are."""
        return self._loras.patched(model)

    # --- files ------------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.catalog.models_dir

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

    def contents(self, sub: SubFile) -> Any:
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

    def failed(self, sub: SubFile, what: str) -> errors.ModelLoadError:
        """The error for a sub-model file that cannot be used (see `_failed`)."""
        return _failed(sub.kind, sub.code, what, self._where(sub.kind, sub.path))

    # --- embeddings ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _embedding(self, pipe: Any, emb: _Resolved) -> Iterator[None]:
        """One SDXL embedding: `clip_l` into the first tokenizer and text encoder, `clip_g` into the second.

        All or nothing, and removed when the block ends: each part takes back what it added, in reverse.
        """
        vectors = self.contents(emb)
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
        modules: hypernetwork.Hypernetwork = self.contents(sub)
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


def _failed(kind: str, code: str, what: str, where: str) -> errors.ModelLoadError:
    """The error for a sub-model that cannot be used: what went wrong, and what the client and the operator
    can do about it (the main model is left as it was)."""
    return errors.ModelLoadError(
        f"{_KIND_NAMES[kind]} {code!r} {what}; the main model was left unchanged. Submit the task without it, "
        f"or ask the operator to restore or replace {where} (ListModels shows what is installed)"
    )


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


def _read(sub: SubFile, where: str, models_dir: Path) -> Any:
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

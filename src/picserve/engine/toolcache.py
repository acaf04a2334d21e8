"""The image tools' models a worker keeps loaded: upscalers (engine/upscale.py), background models
(engine/cutout.py) and erasers (engine/erase.py) share this cache, and the first two kinds' loading
through spandrel (`spandrel_load`).

A model is looked up in the catalog by its ModelCode, loaded on first use, and loaded again when its file
changed (its mtime or size, or what its catalog entry says it is, e.g. a background model's rembg family);
the least recently used leave first once the models held weigh more than the budget (the one just used
always stays). Loading happens outside the lock, so the worker's heartbeat can read `loaded()` meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from picserve import catalog as catalog_module
from picserve import errors
from picserve.engine import memory

__all__ = ["ToolModels", "spandrel_load"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Held(Generic[T]):
    model: T
    path: Path
    #: the file's (mtime_ns, size) and the entry's `identity` when it was loaded
    version: tuple[int, int, Hashable]
    weight: int


class ToolModels(Generic[T]):
    """The loaded models of one catalog kind, by ModelCode.

    Args:
        catalog: where the codes are looked up.
        kind: the catalog kind ("upscale", "background", "inpaint").
        what: the model as messages name it ("upscaler", "background model", "eraser").
        load: an entry → its loaded model; raises ModelLoadError (or OutOfMemory) naming the code.
        budget: what the held models may weigh together.
        weigh: a loaded model's weight (default 1: `budget` counts models).
        identity: what of an entry besides its file makes a loaded model stale when it changes.
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        kind: str,
        what: str,
        load: Callable[[catalog_module.Entry], T],
        budget: int,
        weigh: Callable[[T], int] = lambda _model: 1,
        identity: Callable[[catalog_module.Entry], Hashable] = lambda _entry: None,
    ) -> None:
        self.catalog, self.kind, self.what = catalog, kind, what
        self._load, self._weigh, self._identity = load, weigh, identity
        self.budget = budget
        self._held: OrderedDict[str, _Held[T]] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        """The codes of the models held, least recently used first."""
        with self._lock:
            return list(self._held)

    def get(self, code: str) -> T:
        """The loaded model `code`. ModelLoadError (naming the code and why) when it is no longer installed,
        its entry has a problem, or its file cannot be read; the loader's own errors as they are."""
        entry = self.catalog.get(self.kind, code)
        if entry is None:
            self._drop(code)
            raise errors.ModelLoadError(f"{self.what} {code!r} is no longer in models/{self.kind}")
        if entry.info.problem:
            self._drop(code)
            raise errors.ModelLoadError(f"{self.what} {code!r} cannot be used: {entry.info.problem}")
        try:
            stat = entry.path.stat()
        except OSError as exc:
            self._drop(code)
            raise errors.ModelLoadError(f"{self.what} {code!r}: {entry.path.name} cannot be read ({exc})") from None
        version = (stat.st_mtime_ns, stat.st_size, self._identity(entry))
        with self._lock:
            held = self._held.get(code)
            if held is not None and (held.path, held.version) == (entry.path, version):
                self._held.move_to_end(code)
                return held.model
        self._drop(code)  # changed on disk, or a new file under that name: the old one goes first
        model = self._load(entry)
        with self._lock:
            self._held[code] = _Held(model, entry.path, version, self._weigh(model))
            while len(self._held) > 1 and sum(h.weight for h in self._held.values()) > self.budget:
                dropped, _ = self._held.popitem(last=False)
                log.info("%s %s unloaded (least recently used)", self.what, dropped)
        return model

    def _drop(self, code: str) -> None:
        with self._lock:
            self._held.pop(code, None)


def spandrel_load(what: str, code: str, path: Path, device: Any) -> Any:
    """spandrel's descriptor of the file `path` on `device` (an upscaler's or an eraser's: `what`), with
    whatever the bytes caused as ModelLoadError naming `code` and the file, and running out of memory as
    OutOfMemory. The caller checks the descriptor is of its kind."""
    import spandrel  # 2 s to import (with torchvision): only when a worker first needs a tool model

    try:
        return spandrel.ModelLoader(device=device).load_from_file(path)
    except Exception as exc:  # spandrel's own errors, pickle's, safetensors', zip's: whatever the bytes caused
        if memory.is_out_of_memory(exc):
            raise errors.OutOfMemory(f"{what} {code}: the device ran out of memory loading it") from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(f"{what} {code}: {path.name} is not a model spandrel can load ({reason})") from exc

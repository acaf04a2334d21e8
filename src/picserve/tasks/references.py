"""Reference images (img2img, inpainting) wait in the store for their task's lifetime, not in its row.

A request may carry tens of megabytes of base64; kept in the task row, every `ListTasksDetails` and
every worker fetch would read it again. At submit the image and mask move to the store under `.ref`
keys (never expired by the result TTL, never served as results) and the spec keeps the keys; the
worker reads them back before generating; they are deleted when the task ends (by its worker, or
with the task by retention when it never ran).
"""

from __future__ import annotations

import base64
import dataclasses

from picserve import domain, errors
from picserve.storage.base import Store

__all__ = ["SUFFIX", "carried", "drop", "keys", "restore", "stash"]

#: the key suffix of a task input, as opposed to a result's `.png`
SUFFIX = ".ref"


def _pairs(spec: domain.ActionSpec) -> list[str]:
    """The names of `spec`'s reference images: every field `name` with a `name_key` beside it
    (GenerationSpec's init_image and mask_image; any task kind's images the same way)."""
    names: set[str] = {f.name for f in dataclasses.fields(spec)} if dataclasses.is_dataclass(spec) else set()
    return sorted(name for name in names if f"{name}_key" in names)


def _lists(spec: domain.ActionSpec) -> list[str]:
    """The names of `spec`'s lists of reference images: a tuple field `name` with `name_keys` beside it
    (CutoutSpec's images)."""
    names: set[str] = {f.name for f in dataclasses.fields(spec)} if dataclasses.is_dataclass(spec) else set()
    return sorted(name for name in names if f"{name}_keys" in names)


def carried(spec: domain.ActionSpec) -> bool:
    """Whether `spec` carries an image to stash (most requests carry none: no store call for them)."""
    return any(getattr(spec, name) for name in _pairs(spec)) or any(any(getattr(spec, name)) for name in _lists(spec))


def stash(spec: domain.ActionSpec, store: Store) -> domain.ActionSpec:
    """`spec` with its images moved into `store` (the spec keeps their keys)."""
    changes: dict[str, object] = {}
    for name in _pairs(spec):
        data = getattr(spec, name)
        if data:
            changes.update({name: None, f"{name}_key": store.put(base64.b64decode(data), SUFFIX)})
    for name in _lists(spec):
        datas: tuple[str | None, ...] = getattr(spec, name)
        if any(datas):
            stored = tuple(store.put(base64.b64decode(d), SUFFIX) if d else None for d in datas)
            changes.update({name: tuple(None for _ in datas), f"{name}_keys": stored})
    return _evolve(spec, changes)


def restore(spec: domain.ActionSpec, store: Store) -> domain.ActionSpec:
    """`spec` with its images read back from `store`; GenerationError when one is gone."""
    changes: dict[str, object] = {}
    for name in _pairs(spec):
        key = getattr(spec, f"{name}_key")
        if key is None:
            continue
        changes[name] = _read(store, key, name.split("_")[0])
        changes[f"{name}_key"] = None
    for name in _lists(spec):
        keys_: tuple[str | None, ...] = getattr(spec, f"{name}_keys")
        if any(keys_):
            datas: tuple[str | None, ...] = getattr(spec, name)
            changes[name] = tuple(
                _read(store, key, f"{name}[{i}]") if key else data
                for i, (key, data) in enumerate(zip(keys_, datas, strict=True))
            )
            changes[f"{name}_keys"] = tuple(None for _ in keys_)
    return _evolve(spec, changes)


def _read(store: Store, key: str, what: str) -> str:
    data = store.get(key)
    if data is None:
        raise errors.GenerationError(f"the task's reference {what} is no longer stored; submit again")
    return base64.b64encode(data).decode()


def keys(spec: domain.ActionSpec) -> list[str]:
    """The store keys of `spec`'s references."""
    single = [key for name in _pairs(spec) if (key := getattr(spec, f"{name}_key")) is not None]
    return single + [key for name in _lists(spec) for key in getattr(spec, f"{name}_keys") if key is not None]


def drop(spec: domain.ActionSpec, store: Store) -> None:
    """Delete `spec`'s references from `store` (already gone is fine)."""
    for key in keys(spec):
        store.delete(key)


def _evolve(spec: domain.ActionSpec, changes: dict[str, object]) -> domain.ActionSpec:
    return dataclasses.replace(spec, **changes) if changes else spec  # type: ignore[type-var]

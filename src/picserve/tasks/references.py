"""Reference images (img2img, inpainting) wait in the store for their task's lifetime, not in its row.

A request may carry tens of megabytes of base64; kept in the task row, every `ListTasksDetails` and
every worker fetch would read it again. At submit the image and mask move to the store under `.ref`
keys (never expired by the result TTL, never served as results) and the spec keeps the keys; the
worker reads them back before generating; they are deleted when the task ends (by its worker, or
with the task by retention when it never ran).
"""

from __future__ import annotations

import base64

from picserve import domain, errors
from picserve.storage.base import Store

__all__ = ["SUFFIX", "drop", "keys", "restore", "stash"]

#: the key suffix of a task input, as opposed to a result's `.png`
SUFFIX = ".ref"


def stash(spec: domain.GenerationSpec, store: Store) -> domain.GenerationSpec:
    """`spec` with its image and mask moved into `store` (the spec keeps their keys)."""
    changes: dict[str, str | None] = {}
    if spec.init_image:
        changes.update(init_image=None, init_image_key=store.put(base64.b64decode(spec.init_image), SUFFIX))
    if spec.mask_image:
        changes.update(mask_image=None, mask_image_key=store.put(base64.b64decode(spec.mask_image), SUFFIX))
    return spec.evolve(**changes) if changes else spec


def restore(spec: domain.GenerationSpec, store: Store) -> domain.GenerationSpec:
    """`spec` with its image and mask read back from `store`; GenerationError when one is gone."""
    changes: dict[str, str | None] = {}
    for name, key in (("init_image", spec.init_image_key), ("mask_image", spec.mask_image_key)):
        if key is None:
            continue
        data = store.get(key)
        if data is None:
            raise errors.GenerationError(f"the task's reference {name.split('_')[0]} is no longer stored; submit again")
        changes[name] = base64.b64encode(data).decode()
        changes[f"{name}_key"] = None
    return spec.evolve(**changes) if changes else spec


def keys(spec: domain.GenerationSpec) -> list[str]:
    """The store keys of `spec`'s references."""
    return [key for key in (spec.init_image_key, spec.mask_image_key) if key is not None]


def drop(spec: domain.GenerationSpec, store: Store) -> None:
    """Delete `spec`'s references from `store` (already gone is fine)."""
    for key in keys(spec):
        store.delete(key)

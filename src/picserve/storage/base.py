"""The `Store` protocol: where result images live between the worker that writes them and the client.

`disk.DiskStore` keeps them under the data folder; `memory.MemoryStore` in a dict, for tests. Both
pass the same contract suite (tests/contract/test_store.py).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Store"]


class Store(Protocol):
    """Files behind unguessable keys. Results (`.png`) stop working `ttl` seconds after they were
    written; task inputs (`.ref`, see tasks/references.py) stay until they are deleted."""

    def put(self, data: bytes, suffix: str = ".png") -> str:
        """Store `data` under a new unguessable key ending in `suffix` (`.png` or `.ref`) and return the
        key; StorageError when it cannot."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`; None when the key is unknown, malformed or expired."""
        ...

    def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        ...

    def url(self, key: str, base_url: str) -> str:
        """The URL a client downloads `key` from, given the base URL the API is reached on."""
        ...

    def expire(self) -> int:
        """Remove every expired result (never a `.ref` input); how many were removed."""
        ...

"""Result images in a dict, for tests: the `Store` protocol with a clock the test can move, and an
optional capacity, so that a test can fill it up as a disk fills up."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from picserve import errors

__all__ = ["MemoryStore"]


class MemoryStore:
    """The `Store` protocol in memory; thread-safe, since workers call it from a thread.

    `capacity`: the bytes it holds at most (None: unlimited); a `put` that would go beyond raises
    StorageError, as a full disk does. It may be changed at any time.
    """

    def __init__(self, ttl_seconds: int, clock: Callable[[], float] = time.time, capacity: int | None = None) -> None:
        self.ttl = ttl_seconds
        self.clock = clock
        #: the bytes it holds at most; None: unlimited
        self.capacity = capacity
        self._lock = threading.Lock()
        #: key → (bytes, when written by `clock`)
        self._items: dict[str, tuple[bytes, float]] = {}

    def put(self, data: bytes, suffix: str = ".png") -> str:
        key = secrets.token_urlsafe(24) + suffix
        with self._lock:
            if self.capacity is not None and self.used + len(data) > self.capacity:
                raise errors.StorageError(
                    f"the result images could not be stored (the store is full: {self.used} of {self.capacity} "
                    "bytes used); the operator should free space in the store; then submit the task again"
                )
            self._items[key] = (bytes(data), self.clock())
        return key

    @property
    def used(self) -> int:
        """The bytes it holds, expired or not."""
        return sum(len(data) for data, _ in self._items.values())

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
        if item is None:
            return None
        data, written = item
        return data if not key.endswith(".png") or self.clock() - written < self.ttl else None

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._items.pop(key, None) is not None

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/results/{key}"

    def __len__(self) -> int:
        """How many results it holds, expired or not (tests check that nothing is left behind)."""
        with self._lock:
            return len(self._items)

    def expire(self) -> int:
        cutoff = self.clock() - self.ttl
        with self._lock:
            expired = [k for k, (_, written) in self._items.items() if k.endswith(".png") and written < cutoff]
            for key in expired:
                del self._items[key]
        return len(expired)

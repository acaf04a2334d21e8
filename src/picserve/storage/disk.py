"""Result images as files under the data folder, behind unguessable, expiring URLs.

A key is `<token>.png` with a 192-bit random token: knowing a TaskUID does not reveal its images, and
a URL stops working `ttl` seconds after the file was written (PICPIK keeps results 24 hours).

A file is written under a hidden temporary name and renamed into place, so a key is either there
complete or not at all: a write that fails (disk full, folder read-only) deletes its temporary file
and is a `StorageError` that tells the operator what to fix.
"""

from __future__ import annotations

import contextlib
import errno
import re
import secrets
import time
from pathlib import Path

from picserve import errors

__all__ = ["DiskStore"]

_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(png|ref)$")


class DiskStore:
    """The `Store` protocol on a folder; a result's age is its file's mtime."""

    def __init__(self, folder: Path, ttl_seconds: int) -> None:
        self.folder = Path(folder)
        self.ttl = ttl_seconds

    def put(self, data: bytes, suffix: str = ".png") -> str:
        """Store `data`; returns its key. StorageError when it cannot, with no file left behind."""
        key = secrets.token_urlsafe(24) + suffix
        tmp = self.folder / f".{key}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as file:
                file.write(data)
            tmp.rename(self.folder / key)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise errors.StorageError(_advice(exc, self.folder)) from exc
        return key

    def get(self, key: str) -> bytes | None:
        """The bytes behind `key`, or None when it is unknown, malformed or expired."""
        path = self._path(key)
        if path is None:
            return None
        try:
            if key.endswith(".png") and time.time() - path.stat().st_mtime >= self.ttl:
                return None
            return path.read_bytes()
        except OSError:  # unknown, or removed by expire() meanwhile
            return None

    def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        path = self._path(key)
        if path is None:
            return False
        try:
            path.unlink()
        except OSError:
            return False
        return True

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/results/{key}"

    def expire(self) -> int:
        """Delete expired results; returns how many. Temporary files older than the TTL (left by a
        process killed mid-write) go too, without being counted."""
        removed, cutoff = 0, time.time() - self.ttl
        for path in self.folder.glob("*.png") if self.folder.is_dir() else ():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        for path in self.folder.glob(".*.tmp") if self.folder.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        return removed

    def _path(self, key: str) -> Path | None:
        """Where `key` lives, or None when it is malformed (which also keeps it inside the folder)."""
        return self.folder / key if _KEY.match(key) else None


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _advice(exc: OSError, folder: Path) -> str:
    """What went wrong writing to `folder`, and what the operator should do about it."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        todo = f"the operator should free disk space in {folder}"
    elif exc.errno in _NOT_WRITABLE:
        todo = f"the operator should make {folder} writable by the worker"
    else:
        todo = f"the operator should check {folder} and its disk"
    return f"the result images could not be stored ({reason}); {todo}; then submit the task again"

"""Private keys at rest: sealed with a server secret, so a database dump does not leak them.

PICPIK signatures are SHA-1 over the request plus the private key, so the server must know each
private key itself (a hash of it would not do). What it can avoid is keeping them readable where
they are stored: every `private_key` in `picserve_keys` is a Fernet token (AES-128-CBC + HMAC-SHA256,
from the `cryptography` package) prefixed `fernet:`. The secret that opens them never enters the
database:

- `PICSERVE_SECRET_KEY`: one or more Fernet keys, comma-separated, newest first; or else
- `<data_dir>/secret.key`: created (mode 0600) by the first process that needs it, one key per line,
  newest first.

The newest secret seals; every listed secret opens (`MultiFernet`), which is what lets
`picserve keys rotate-secret` re-seal every key under a new secret while processes that still hold
the previous one keep working. A process reading the key file re-reads it when a stored key does not
open, so a rotation reaches running API nodes on the same file without a restart.

Only processes that check signatures or manage keys need the secret: GPU workers never read private
keys and are opened without it. The same secret seals an ImportModel's token (and a URL carrying
credentials) in its task row; the worker that runs the import opens it with `existing`, and one that
has no secret fails that task saying so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from picserve import errors
from picserve.config import Settings

__all__ = ["PREFIX", "KeyCipher", "existing", "is_sealed", "load", "new_secret", "secret_file"]

log = logging.getLogger(__name__)

#: what a sealed private key starts with; a value without it is a plaintext key from before sealing
PREFIX = "fernet:"


def new_secret() -> str:
    """A fresh Fernet key (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode("ascii")


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


class KeyCipher:
    """Seals and opens private keys with the newest of `secrets` (any of them opens)."""

    def __init__(self, secrets: Sequence[str], source: Path | None = None) -> None:
        if not secrets:
            raise ValueError("KeyCipher needs at least one secret")
        self._secrets = list(secrets)
        self._fernet = MultiFernet([_fernet(s) for s in secrets])
        #: the key file the secrets came from, re-read when a stored key does not open
        self.source = source

    @classmethod
    def generate(cls) -> KeyCipher:
        """A cipher on a fresh secret that lives only in memory (tests, throwaway databases)."""
        return cls([new_secret()])

    @property
    def secrets(self) -> list[str]:
        return list(self._secrets)

    def seal(self, private_key: str) -> str:
        return PREFIX + self._fernet.encrypt(private_key.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        """The private key in `stored` (a plaintext value from before sealing is returned as it is)."""
        if not is_sealed(stored):
            return stored
        token = stored.removeprefix(PREFIX).encode("ascii")
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken:
            if self.source is not None and self._reload():
                return self.open(stored)
        raise errors.PicserveError(
            "a stored private key does not open with this server's secret: every API node and key command "
            "must share the secret (PICSERVE_SECRET_KEY or the data folder's secret.key); "
            "see docs/operations.md, Security"
        )

    def reseal(self, stored: str) -> str:
        """`stored` sealed under the newest secret (a plaintext value is sealed)."""
        return self.seal(self.open(stored))

    def _reload(self) -> bool:
        """Re-read the key file; True when it now holds other secrets."""
        assert self.source is not None
        try:
            secrets = _read(self.source)
        except OSError:
            return False
        if not secrets or secrets == self._secrets:
            return False
        log.info("the server secret changed in %s; re-read", self.source)
        self._secrets = secrets
        self._fernet = MultiFernet([_fernet(s) for s in secrets])
        return True


def secret_file(settings: Settings) -> Path:
    return settings.data_dir / "secret.key"


def load(settings: Settings) -> KeyCipher:
    """The cipher of `settings`: PICSERVE_SECRET_KEY when set, else the data folder's key file,
    created with a fresh secret by the first process that needs it."""
    if settings.secret_key:
        secrets = [s.strip() for s in settings.secret_key.split(",") if s.strip()]
        for s in secrets:
            _fernet(s)  # a malformed secret is refused at start, not at the first request
        return KeyCipher(secrets)
    path = secret_file(settings)
    if not path.exists():
        _create(path)
    return KeyCipher(_read(path), source=path)


def existing(settings: Settings) -> KeyCipher | None:
    """The cipher of `settings` where a secret exists (PICSERVE_SECRET_KEY, or the data folder's key
    file), else None: for a process that opens what an API node sealed and must never make a secret of
    its own (a worker opening an ImportModel's token)."""
    if settings.secret_key or secret_file(settings).exists():
        return load(settings)
    return None


def write_secrets(path: Path, secrets: Sequence[str]) -> None:
    """Replace the key file atomically (mode 0600), newest secret first."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(s + "\n" for s in secrets))
    os.replace(tmp, path)


def _create(path: Path) -> None:
    """Write a fresh secret to `path` unless it exists. Written aside, then linked into place: of two
    processes starting at once, one wins the link and both read its complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")
    try:
        os.link(tmp, path)
        log.info("created the server secret %s (back it up: keys cannot be read without it)", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _read(path: Path) -> list[str]:
    secrets = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not secrets:
        raise errors.PicserveError(f"{path} holds no secret; restore it from a backup")
    return secrets


def _fernet(secret: str) -> Fernet:
    try:
        return Fernet(secret.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise errors.PicserveError(
            "the server secret is not a Fernet key (32 url-safe base64-encoded bytes); "
            "make one with `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
        ) from None

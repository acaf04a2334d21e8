"""Who is calling: the key store lookup, then the PICPIK signature check."""

from __future__ import annotations

from datetime import UTC, datetime

from picserve import domain, errors
from picserve.protocol import signature
from picserve.protocol.envelope import Envelope
from picserve.tasks.repository import TaskRepository

__all__ = ["authenticate"]


async def authenticate(repo: TaskRepository, envelope: Envelope) -> domain.Account:
    account = await repo.get_account(envelope.public_key)
    if account is None or account.revoked:
        raise errors.UnknownKey(f"PublicKey {envelope.public_key!r} is unknown or revoked")
    if account.expire_at is not None and account.expire_at < datetime.now(UTC):
        raise errors.UnknownKey(f"PublicKey {envelope.public_key!r} expired on {account.expire_at:%Y-%m-%d}")
    if not signature.verify(envelope.body, account.private_key):
        raise errors.AuthError(
            "Signature does not match: sign every field you send (request_uuid included), "
            "keys sorted, followed by your PrivateKey, with SHA-1"
        )
    return account

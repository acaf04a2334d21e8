"""Who is calling: the key store lookup, the PICPIK signature check (or, for the OpenAI-compatible
endpoint, the private key itself as a bearer token), then the key's request rate."""

from __future__ import annotations

import hmac
import math
from datetime import UTC, datetime

from picserve import domain, errors
from picserve.protocol import signature
from picserve.protocol.envelope import Envelope
from picserve.tasks.repository import TaskRepository

__all__ = ["SIGNATURE_MISMATCH", "authenticate", "authenticate_key"]

#: the refusal of a signature that does not match: the likeliest cause first, then the rule
SIGNATURE_MISMATCH = (
    "Signature does not match. Most likely the PrivateKey you signed with is not this PublicKey's: "
    "use the pair `picserve keys create` printed together, copied whole, with no space or newline "
    "around either key. Otherwise the signing is off: SHA-1 of every field you send but Signature "
    "(request_uuid included), as key + value, keys sorted, followed by the PrivateKey"
)


async def authenticate(repo: TaskRepository, envelope: Envelope, requests_per_minute: int = 0) -> domain.Account:
    """The account whose key signed `envelope`, once its request is counted against its rate (its own
    `max_requests_per_minute`, else `requests_per_minute`; 0 = none).

    The account is read afresh on every request, so a revocation (or a new limit) takes effect on the
    next request on every API node. Only correctly signed requests are counted: nobody can spend
    another key's rate without its private key. The signature is compared in constant time.
    """
    account = await _live_account(repo, envelope.public_key)
    if not signature.verify(envelope.body, account.private_key):
        raise errors.AuthError(SIGNATURE_MISMATCH)
    await _count_request(repo, account, requests_per_minute)
    return account


async def authenticate_key(
    repo: TaskRepository, public_key: str, private_key: str, requests_per_minute: int = 0
) -> domain.Account:
    """The account of a key pair presented as such (the OpenAI-compatible endpoint's bearer token),
    checked and counted exactly as `authenticate` checks a signed request: unknown, revoked or expired
    keys are refused, the private key is compared in constant time, and only then is the request counted.
    """
    account = await _live_account(repo, public_key)
    given, stored = private_key.encode("utf-8"), account.private_key.encode("utf-8")
    if not hmac.compare_digest(given, stored):
        raise errors.AuthError(f"the private key given for PublicKey {public_key!r} is not this key's")
    await _count_request(repo, account, requests_per_minute)
    return account


async def _live_account(repo: TaskRepository, public_key: str) -> domain.Account:
    account = await repo.get_account(public_key)
    if account is None and public_key != public_key.strip():
        raise errors.UnknownKey(
            f"PublicKey {public_key!r} is unknown: it has spaces or a newline around it "
            "(a copy-paste?); send the key without them"
        )
    if account is None or account.revoked:
        raise errors.UnknownKey(f"PublicKey {public_key!r} is unknown or revoked")
    if account.expire_at is not None and account.expire_at < datetime.now(UTC):
        raise errors.UnknownKey(f"PublicKey {public_key!r} expired on {account.expire_at:%Y-%m-%d}")
    return account


async def _count_request(repo: TaskRepository, account: domain.Account, requests_per_minute: int) -> None:
    rate = account.max_requests_per_minute if account.max_requests_per_minute is not None else requests_per_minute
    if rate > 0:
        wait = await repo.take_request(account.public_key, rate)
        if wait > 0:
            raise errors.RateLimited(
                f"this key may send {rate} requests per minute and has sent them: "
                f"retry in {math.ceil(wait * 10) / 10:g} s"
            )

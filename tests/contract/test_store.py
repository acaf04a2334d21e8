"""The `Store` contract, run against DiskStore and MemoryStore (see conftest.subject)."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from picserve.storage.s3 import S3Store
from tests.contract.conftest import TTL, StoreUnderTest

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def test_put_then_get_returns_the_bytes(subject: StoreUnderTest) -> None:
    key = subject.store.put(PNG)
    assert key.endswith(".png")
    assert subject.store.get(key) == PNG


def test_keys_are_unguessable(subject: StoreUnderTest) -> None:
    keys = [subject.store.put(PNG) for _ in range(50)]
    assert len(set(keys)) == len(keys)
    assert all(len(key) >= 32 for key in keys)


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "short.png", "", "/results/x.png", secrets.token_urlsafe(24) + ".png"],
    ids=["traversal", "short", "empty", "path", "well-formed-unknown"],
)
def test_malformed_or_unknown_keys_are_not_found(subject: StoreUnderTest, key: str) -> None:
    subject.store.put(PNG)
    assert subject.store.get(key) is None
    assert subject.store.delete(key) is False


def test_delete_removes_the_entry_once(subject: StoreUnderTest) -> None:
    key, kept = subject.store.put(PNG), subject.store.put(b"other")
    assert subject.store.delete(key) is True
    assert subject.store.get(key) is None
    assert subject.store.delete(key) is False
    assert subject.store.get(kept) == b"other"


def test_an_entry_younger_than_the_ttl_is_kept(subject: StoreUnderTest) -> None:
    key = subject.store.put(PNG)
    subject.age(key, TTL - 60)
    assert subject.store.expire() == 0
    assert subject.store.get(key) == PNG


def test_an_entry_older_than_the_ttl_expires(subject: StoreUnderTest) -> None:
    old = subject.store.put(PNG)
    subject.age(old, TTL + 60)
    fresh = subject.store.put(b"fresh")
    assert subject.store.get(old) is None  # refused even before expire() removes it
    assert subject.store.expire() == 1
    assert subject.store.expire() == 0
    assert subject.store.delete(old) is False  # expire() removed it
    assert subject.store.get(fresh) == b"fresh"


def test_a_task_input_never_expires_until_deleted(subject: StoreUnderTest) -> None:
    ref = subject.store.put(b"reference image", ".ref")
    assert ref.endswith(".ref")
    subject.age(ref, TTL * 10)
    assert subject.store.expire() == 0
    assert subject.store.get(ref) == b"reference image"
    assert subject.store.delete(ref) and subject.store.get(ref) is None


def test_expire_on_an_empty_store_removes_nothing(subject: StoreUnderTest) -> None:
    assert subject.store.expire() == 0


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/"])
def test_url_is_under_results(subject: StoreUnderTest, base_url: str) -> None:
    key = subject.store.put(PNG)
    url = subject.store.url(key, base_url)
    if isinstance(subject.store, S3Store):  # a presigned GET, straight from the bucket, until the TTL ends
        assert httpx.get(url).content == PNG
        expires = int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])
        assert TTL - 5 <= expires <= TTL
        older = subject.store.put(PNG)
        subject.age(older, TTL - 600)
        assert 590 <= int(parse_qs(urlsplit(subject.store.url(older, base_url)).query)["X-Amz-Expires"][0]) <= 600
    else:
        assert url == f"http://127.0.0.1:8080/results/{key}"

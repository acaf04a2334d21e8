"""The contract suites' fixtures: every test runs once per implementation of the protocol it checks.

A repository test writes its body as `async def body(repo)` and hands it to `run_with_repo`, which
opens a fresh repository inside its own event loop (a PostgreSQL pool must be opened in the loop
that uses it) and closes it afterwards. pytest-asyncio is not needed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import procrastinate
import pytest

from picserve.storage.base import Store
from picserve.tasks.repository import TaskRepository
from tests.s3_server import age_s3_object, make_bucket

TTL = 3600


# --- TaskRepository ------------------------------------------------------------------------------


@dataclass
class Backend:
    """A repository and the procrastinate App its jobs are deferred on."""

    repo: TaskRepository
    app: procrastinate.App


BackendFactory = Callable[[], AbstractAsyncContextManager[Backend]]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    """Opens a fresh, empty backend of one implementation; use inside the test's event loop."""
    if request.param == "memory":

        @asynccontextmanager
        async def open_memory() -> AsyncIterator[Backend]:
            from picserve.tasks.memory import InMemoryRepository, in_memory_app

            app = in_memory_app()
            yield Backend(InMemoryRepository(app), app)

        return open_memory

    url = request.getfixturevalue("database_url")  # a fresh database, only for this parameter

    @asynccontextmanager
    async def open_postgres() -> AsyncIterator[Backend]:
        from picserve.keycipher import KeyCipher
        from picserve.tasks import database

        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            yield Backend(db.repo, db.app)

    return open_postgres


@pytest.fixture
def run_with_repo(backend_factory: BackendFactory) -> Callable[[Callable[[TaskRepository], Awaitable[None]]], None]:
    """`run_with_repo(body)`: awaits `body(repo)` on a fresh repository, in a new event loop."""

    def run(body: Callable[[TaskRepository], Awaitable[None]]) -> None:
        async def main() -> None:
            async with backend_factory() as backend:
                await body(backend.repo)

        asyncio.run(main())

    return run


# --- Store -----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreUnderTest:
    store: Store
    #: make `key`'s entry `seconds` older than it is
    age: Callable[[str, float], None]


@pytest.fixture(params=["disk", "memory", "s3"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    if request.param == "disk":
        from picserve.storage.disk import DiskStore

        disk = DiskStore(tmp_path / "results", ttl_seconds=TTL)

        def age_file(key: str, seconds: float) -> None:
            path = disk.folder / key
            written = path.stat().st_mtime - seconds
            os.utime(path, (written, written))

        return StoreUnderTest(disk, age_file)

    if request.param == "s3":
        from picserve.storage.s3 import S3Location, S3Store

        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"contract-{secrets.token_hex(4)}"
        make_bucket(endpoint, bucket)
        s3 = S3Store(S3Location(bucket, "results/x"), TTL, endpoint_url=endpoint)

        def age_object(key: str, seconds: float) -> None:  # S3 sets LastModified: moved back in moto's store
            age_s3_object(bucket, s3.location.object_key(key), seconds)

        return StoreUnderTest(s3, age_object)

    from picserve.storage.memory import MemoryStore

    clock = FakeClock()
    memory = MemoryStore(ttl_seconds=TTL, clock=clock)

    def advance_clock(key: str, seconds: float) -> None:  # ages every entry, which the tests allow for
        clock.now += seconds

    return StoreUnderTest(memory, advance_clock)

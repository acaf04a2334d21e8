"""The `TaskRepository` contract for a key's scheduling (priority, weight: worker/routing.py), against
InMemoryRepository and PostgresRepository."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import pytest

from picserve.tasks.repository import TaskRepository

RunWithRepo = Callable[[Callable[[TaskRepository], Awaitable[None]]], None]


def test_a_new_key_has_the_default_scheduling(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("plain", 10)
        assert (account.priority, account.weight) == (0, 1.0)

    run_with_repo(body)


def test_a_key_keeps_its_priority_and_weight(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("vip", 10, max_open_tasks=5)
        assert await repo.set_scheduling(account.public_key, 3, 2.5)
        again = await repo.get_account(account.public_key)
        assert again is not None and (again.priority, again.weight) == (3, 2.5)
        assert again.max_open_tasks == 5  # limits are not touched
        assert [(a.priority, a.weight) for a in await repo.list_keys()] == [(3, 2.5)]
        assert await repo.set_scheduling(account.public_key, -1, 0.25)
        again = await repo.get_account(account.public_key)
        assert again is not None and (again.priority, again.weight) == (-1, 0.25)
        assert not await repo.set_scheduling(secrets.token_hex(16), 1, 1.0)

    run_with_repo(body)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_a_weight_must_be_positive(run_with_repo: RunWithRepo, weight: float) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("k", 10)
        with pytest.raises(ValueError, match="weight"):
            await repo.set_scheduling(account.public_key, 0, weight)
        again = await repo.get_account(account.public_key)
        assert again is not None and again.weight == 1.0

    run_with_repo(body)

"""The repository's reads for the metrics (`queued_by_model`, `open_task_histogram`), run against
InMemoryRepository and PostgresRepository like the rest of the contract."""

from __future__ import annotations

import dataclasses

from picserve.tasks.repository import TaskRepository
from tests.contract.test_repository import ACTION, SPEC, RunWithRepo, new_uid, queued, running


def test_queued_by_model_counts_queuing_tasks_per_main_model(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        assert await repo.queued_by_model() == {}
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        other = dataclasses.replace(SPEC, model_code="other-xl")
        await queued(repo, alice)
        await queued(repo, bob)
        await repo.create_task(new_uid(), bob, ACTION, other, 1)
        await running(repo, alice)  # running: not queued
        await repo.request_cancel(await queued(repo, bob))  # cancelled: not queued
        assert await repo.queued_by_model() == {SPEC.model_code: 2, "other-xl": 1}

    run_with_repo(body)


def test_open_task_histogram_counts_keys_by_open_tasks(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        assert await repo.open_task_histogram() == {}
        busy = (await repo.create_key("busy", 100)).public_key
        await repo.create_key("idle", 100)
        one = (await repo.create_key("one", 100)).public_key
        gone = (await repo.create_key("gone", 100)).public_key
        gone_busy = (await repo.create_key("gone-busy", 100)).public_key
        for _ in range(3):
            await queued(repo, busy)
        run = await running(repo, busy)  # running counts as open
        await repo.finish_task(run, ["a.png"], [1])  # finished: no longer open
        await running(repo, busy)
        await queued(repo, one)
        await repo.request_cancel(await queued(repo, one))  # cancelled: not open
        await queued(repo, gone_busy)
        assert await repo.revoke_key(gone)  # revoked with nothing open: left out
        assert await repo.revoke_key(gone_busy)  # revoked, but a task still open: counted
        # busy: 4 open; one and gone-busy: 1; idle: 0
        assert await repo.open_task_histogram() == {4: 1, 1: 2, 0: 1}

    run_with_repo(body)

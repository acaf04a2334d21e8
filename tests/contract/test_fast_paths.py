"""The one-read and one-statement paths of a submit and a poll (issue 21, the fast submit path), on
both repositories: `before_submit` is `find_request` + `worker_memory`, `get_details` is `get_many` +
`queue_positions`, and `create_task`'s queue bound (`max_queued`) refuses as TaskService did."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import pytest

from picserve import domain, errors
from picserve.tasks.repository import TaskRepository
from tests.contract.test_repository import ACTION, SPEC, new_uid, queued, take

RunWithRepo = Callable[[Callable[[TaskRepository], Awaitable[None]]], None]


def request(uuid: str, fingerprint: str = "f1") -> domain.RequestId:
    return domain.RequestId(uuid, fingerprint, 60.0)


def test_before_submit_is_find_request_and_worker_memory(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        assert await repo.before_submit(key, None, None) == (None, [])
        assert await repo.before_submit(key, request("r1"), 60.0) == (None, await repo.worker_memory(60.0))
        uid = new_uid()
        await repo.create_task(uid, key, ACTION, SPEC, 1, request=request("r1"))
        assert await repo.before_submit(key, request("r1"), None) == (uid, [])
        assert (await repo.before_submit(key, request("r1"), 60.0))[0] == uid
        with pytest.raises(errors.IdempotencyConflict):
            await repo.before_submit(key, request("r1", "other"), 60.0)
        other = (await repo.create_key("bob", 100)).public_key
        assert await repo.before_submit(other, request("r1"), None) == (None, [])

    run_with_repo(body)


def test_get_details_is_get_many_with_queue_positions(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        uids = []
        for owner in (alice, bob, alice, alice, bob, alice):
            uids.append(await queued(repo, owner))
            await asyncio.sleep(0.002)  # distinct arrival times
        await take(repo, uids[2])  # running: no position
        await repo.request_cancel(uids[3])  # ended: no position
        asked = [uids[5], uids[0], uids[2], uids[3], uids[1], secrets.token_hex(8)]
        details = await repo.get_details(asked, alice)
        records = {t.task_uid: t for t in await repo.get_many(asked, alice)}
        positions = await repo.queue_positions(list(records))
        assert {t.task_uid for t, _ in details} == set(records) == {uids[0], uids[2], uids[3], uids[5]}
        for task, position in details:
            assert position == positions.get(task.task_uid)
            full = records[task.task_uid]
            assert (task.status, task.spec, task.cost, task.progress, task.action) == (
                full.status,
                full.spec,
                full.cost,
                full.progress,
                full.action,
            )
        assert {t.task_uid: p for t, p in details} == {uids[0]: 1, uids[2]: None, uids[3]: None, uids[5]: 4}
        assert await repo.get_details([], alice) == []
        assert await repo.get_details([uids[1]], alice) == []  # bob's

    run_with_repo(body)


def test_create_task_refuses_at_the_queue_bound_writing_nothing(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        await repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_queued=2)
        first = new_uid()
        await repo.create_task(first, key, ACTION, SPEC, 1, max_queued=2, request=request("r1"))
        uid = new_uid()
        with pytest.raises(errors.ServerBusy, match="the queue holds 2 tasks already"):
            await repo.create_task(uid, key, ACTION, SPEC, 1, max_queued=2, request=request("r2"))
        assert await repo.get_many([uid], key) == []
        assert await repo.find_request(key, request("r2")) is None
        assert await repo.queued_count() == 2
        await take(repo, first)  # one leaves the queue: room again
        await repo.create_task(uid, key, ACTION, SPEC, 1, max_queued=2)
        with pytest.raises(errors.ServerBusy):
            await repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_queued=0)

    run_with_repo(body)


def test_concurrent_submits_of_one_key_never_pass_its_limits_together(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 5)).public_key
        outcomes = await asyncio.gather(
            *(repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_open_tasks=4) for _ in range(12)),
            return_exceptions=True,
        )
        created = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, errors.TooManyOpenTasks)]
        assert len(created) == 4 and len(refused) == 8, outcomes
        assert len(await repo.open_tasks(key)) == 4

    run_with_repo(body)

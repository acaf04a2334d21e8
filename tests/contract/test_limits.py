"""The `TaskRepository` contract for what protects the service from one key: its limits (open tasks,
request rate) and idempotent submits, against InMemoryRepository and PostgresRepository."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import pytest

from picserve import domain, errors
from picserve.tasks.repository import TaskRepository
from tests.contract.test_repository import ACTION, SPEC, new_uid, take

RunWithRepo = Callable[[Callable[[TaskRepository], Awaitable[None]]], None]


def request(uuid: str = "req-1", fingerprint: str = "f1", window: float = 3600) -> domain.RequestId:
    return domain.RequestId(uuid, fingerprint, window)


# --- per-key limits as stored ------------------------------------------------------------------------


def test_a_key_keeps_its_own_limits(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        plain = await repo.create_key("plain", 10)
        capped = await repo.create_key("capped", 10, max_open_tasks=3, max_requests_per_minute=0)
        assert (plain.max_open_tasks, plain.max_requests_per_minute) == (None, None)  # the server's
        assert await repo.get_account(capped.public_key) == capped
        assert (capped.max_open_tasks, capped.max_requests_per_minute) == (3, 0)
        assert await repo.set_limits(plain.public_key, 7, 120)
        again = await repo.get_account(plain.public_key)
        assert again is not None and (again.max_open_tasks, again.max_requests_per_minute) == (7, 120)
        assert await repo.set_limits(plain.public_key, None, None)
        again = await repo.get_account(plain.public_key)
        assert again is not None and (again.max_open_tasks, again.max_requests_per_minute) == (None, None)
        assert not await repo.set_limits(secrets.token_hex(16), 1, 1)

    run_with_repo(body)


def test_a_private_key_is_never_in_an_accounts_repr(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("alice", 10)
        assert account.private_key not in repr(account) and account.private_key not in str(account)
        assert account.private_key not in repr(await repo.list_keys())

    run_with_repo(body)


# --- the open-task cap -------------------------------------------------------------------------------


def test_the_open_task_cap_counts_queued_and_running_tasks(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 1000)).public_key
        first, second = new_uid(), new_uid()
        await repo.create_task(first, key, ACTION, SPEC, 1, max_open_tasks=2)
        await repo.create_task(second, key, ACTION, SPEC, 1, max_open_tasks=2)
        run = await take(repo, first)  # running still counts
        with pytest.raises(errors.TooManyOpenTasks, match=r"has 2 open tasks .* at most 2: retry when one"):
            await repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_open_tasks=2)
        assert len(await repo.open_tasks(key)) == 2  # the refused one wrote nothing
        # another key is not affected, and 0 means no cap
        other = (await repo.create_key("other", 1000)).public_key
        await repo.create_task(new_uid(), other, ACTION, SPEC, 1, max_open_tasks=2)
        await repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_open_tasks=0)
        # once a task has ended there is room again
        assert await repo.finish_task(run, ["a.png"], [1])
        await repo.request_cancel(second)
        third = new_uid()
        assert await repo.create_task(third, key, ACTION, SPEC, 1, max_open_tasks=2) == third

    run_with_repo(body)


def test_concurrent_submits_never_pass_the_cap_together(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 1000)).public_key
        outcomes = await asyncio.gather(
            *(repo.create_task(new_uid(), key, ACTION, SPEC, 1, max_open_tasks=3) for _ in range(10)),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(refused) == 7 and all(isinstance(o, errors.TooManyOpenTasks) for o in refused)
        assert len(await repo.open_tasks(key)) == 3

    run_with_repo(body)


# --- the request rate ---------------------------------------------------------------------------------


def test_the_request_rate_lets_a_burst_through_then_says_when_to_retry(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 10)).public_key
        other = (await repo.create_key("other", 10)).public_key
        assert [await repo.take_request(key, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
        waits = [await repo.take_request(key, 3) for _ in range(3)]
        # one request per 20 s after the burst: the next is due in about 20 s; a refusal is not counted
        assert all(18 < w <= 20 for w in waits) and max(waits) - min(waits) < 1
        assert await repo.take_request(other, 3) == 0.0  # every key has its own rate

    run_with_repo(body)


def test_a_high_rate_refills_within_the_second(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 10)).public_key
        passed, wait = 0, 0.0
        while wait == 0.0 and passed < 2000:  # the burst, plus what refills while it is sent
            wait = await repo.take_request(key, 600)
            passed += wait == 0.0
        assert passed >= 600 and 0 < wait <= 0.1
        await asyncio.sleep(wait + 0.05)
        assert await repo.take_request(key, 600) == 0.0

    run_with_repo(body)


# --- idempotent submits -----------------------------------------------------------------------------


def test_a_resend_gets_the_first_task_and_is_charged_once(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 100)).public_key
        first = new_uid()
        assert await repo.find_request(key, request()) is None
        assert await repo.create_task(first, key, ACTION, SPEC, 30, request=request()) == first
        assert await repo.find_request(key, request()) == first
        # the resend writes nothing: same TaskUID, no second task, credits held once
        assert await repo.create_task(new_uid(), key, ACTION, SPEC, 30, request=request()) == first
        assert await repo.open_tasks(key) == [first]
        # even at the cap, or short of credits, a resend of an accepted request gets its TaskUID
        assert await repo.create_task(new_uid(), key, ACTION, SPEC, 999, max_open_tasks=1, request=request()) == first
        # another request_uuid is another task; the same request_uuid of another key is that key's
        second = await repo.create_task(new_uid(), key, ACTION, SPEC, 30, request=request("req-2"))
        other = (await repo.create_key("other", 100)).public_key
        third = await repo.create_task(new_uid(), other, ACTION, SPEC, 30, request=request())
        assert len({first, second, third}) == 3

    run_with_repo(body)


def test_a_request_uuid_reused_with_other_parameters_is_refused(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 100)).public_key
        first = await repo.create_task(new_uid(), key, ACTION, SPEC, 1, request=request(fingerprint="a"))
        with pytest.raises(errors.IdempotencyConflict, match=rf"'req-1' was already used for task {first}"):
            await repo.find_request(key, request(fingerprint="b"))
        with pytest.raises(errors.IdempotencyConflict):
            await repo.create_task(new_uid(), key, ACTION, SPEC, 1, request=request(fingerprint="b"))
        assert await repo.open_tasks(key) == [first]

    run_with_repo(body)


def test_a_request_uuid_is_forgotten_after_its_window(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 100)).public_key
        first = await repo.create_task(new_uid(), key, ACTION, SPEC, 1, request=request(window=0.2))
        await asyncio.sleep(0.3)
        assert await repo.find_request(key, request(fingerprint="other", window=0.2)) is None
        later = new_uid()
        assert await repo.create_task(later, key, ACTION, SPEC, 1, request=request("req-1", "other", 0.2)) == later
        assert await repo.find_request(key, request(fingerprint="other")) == later != first

    run_with_repo(body)


def test_concurrent_resends_make_one_task(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("k", 100)).public_key
        uids = [new_uid() for _ in range(8)]
        got = await asyncio.gather(*(repo.create_task(uid, key, ACTION, SPEC, 5, request=request()) for uid in uids))
        assert len(set(got)) == 1 and got[0] in uids
        assert await repo.open_tasks(key) == [got[0]]

    run_with_repo(body)

"""The `TaskRepository` contract, run against InMemoryRepository and PostgresRepository.

Each test's body is `async def body(repo)`, run on a fresh repository by `run_with_repo` (conftest);
the tests of the procrastinate jobs behind the tasks open a backend themselves (`backend_factory`).
Only what picserve.tasks.repository promises is checked here: the guarded transitions, the credits,
and the fencing of a worker's writes to its run (task, worker, attempt number), so a run superseded
by a requeue can no longer write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import procrastinate
import pytest

from picserve import domain, errors
from picserve.tasks.repository import TaskRepository
from picserve.worker import jobs
from tests.contract.conftest import BackendFactory

Status = domain.TaskStatus
RunWithRepo = Callable[[Callable[[TaskRepository], Awaitable[None]]], None]

SPEC = domain.GenerationSpec(
    model_code="tiny-sdxl",
    prompt="a lighthouse at dusk",
    negative_prompt="blurry",
    width=768,
    height=512,
    batch_size=2,
    steps=4,
    cfg_scale=5.5,
    sampler="DPM++ 2M Karras",
    clip_skip=2,
    seed=1234,
    tiling=True,
    sub_models=(domain.SubModel("lora", "kohya-0", 0.75), domain.SubModel("embedding", "emb-a")),
    original_prompt="um farol ao entardecer",
    warnings=("prompt translated from pt",),
)
ACTION = "GenerateImagesSDXL"


def new_uid() -> str:
    return secrets.token_hex(16)


async def queued(repo: TaskRepository, public_key: str, cost: int = 1) -> str:
    uid = new_uid()
    await repo.create_task(uid, public_key, ACTION, SPEC, cost)
    return uid


async def take(repo: TaskRepository, uid: str, worker: str = "worker-1") -> domain.Run:
    """What a worker does with a queued task: mark it running, under a new run."""
    taken = await repo.mark_running(uid, worker)
    assert taken is not None
    run, spec = taken
    assert (run.task_uid, run.worker, spec) == (uid, worker, SPEC)
    return run


async def running(repo: TaskRepository, public_key: str, cost: int = 1) -> domain.Run:
    return await take(repo, await queued(repo, public_key, cost))


async def record(repo: TaskRepository, uid: str, public_key: str) -> domain.TaskRecord:
    (found,) = await repo.get_many([uid], public_key)
    return found


async def end_task(repo: TaskRepository, run: domain.Run, end: Status) -> bool:
    if end == Status.FINISHED:
        return await repo.finish_task(run, ["a.png"], [1])
    if end == Status.ERROR:
        return await repo.fail_task(run, 501, "boom")
    return await repo.cancel_run(run)


async def refused_everything(repo: TaskRepository, run: domain.Run) -> bool:
    """Whether every write of `run` is refused (each one is tried, whatever the others return)."""
    outcomes = [
        await repo.record_progress(run, 0.75),
        await repo.finish_task(run, ["stale.png"], [9]),
        await repo.fail_task(run, 500, "stale"),
        await repo.cancel_run(run),
        await repo.requeue_run(run) is not None,
    ]
    return outcomes == [False] * 5


async def used(repo: TaskRepository, public_key: str) -> int:
    account = await repo.get_account(public_key)
    assert account is not None
    return account.used_credits


# --- keys -------------------------------------------------------------------------------------------


def test_create_key_makes_a_fresh_key_pair(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        a, b = await repo.create_key("alice", 100), await repo.create_key("bob", 0)
        assert (a.name, a.total_credits, a.used_credits, a.revoked) == ("alice", 100, 0, False)
        assert len(a.public_key) == 32 and len(a.private_key) == 48
        assert int(a.public_key, 16) >= 0 and int(a.private_key, 16) >= 0  # hex
        assert a.public_key != b.public_key and a.private_key != b.private_key

    run_with_repo(body)


def test_list_keys_is_oldest_first(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        assert await repo.list_keys() == []
        keys = [await repo.create_key(name, 1) for name in ("first", "second", "third")]
        assert await repo.list_keys() == keys

    run_with_repo(body)


def test_get_account_returns_the_key_or_none(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("alice", 100)
        assert await repo.get_account(account.public_key) == account
        assert await repo.get_account(secrets.token_hex(16)) is None

    run_with_repo(body)


def test_an_admin_key_is_made_or_set_and_read_back(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        plain, admin = await repo.create_key("user", 1), await repo.create_key("operator", 1, admin=True)
        assert (plain.admin, admin.admin) == (False, True)
        assert await repo.set_admin(plain.public_key, True) and await repo.set_admin(admin.public_key, False)
        read = [await repo.get_account(a.public_key) for a in (plain, admin)]
        assert [a.admin for a in read if a is not None] == [True, False]
        assert await repo.set_admin(secrets.token_hex(16), True) is False

    run_with_repo(body)


def test_revoke_key_keeps_the_account_readable(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("alice", 100)
        assert await repo.revoke_key(account.public_key) is True
        revoked = await repo.get_account(account.public_key)
        assert revoked is not None and revoked.revoked
        assert await repo.revoke_key(secrets.token_hex(16)) is False

    run_with_repo(body)


def test_add_credits_adds_to_the_total(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        account = await repo.create_key("alice", 100)
        assert await repo.add_credits(account.public_key, 25) is True
        after = await repo.get_account(account.public_key)
        assert after is not None and (after.total_credits, after.used_credits) == (125, 0)
        assert await repo.add_credits(secrets.token_hex(16), 25) is False

    run_with_repo(body)


# --- creating and reading tasks ------------------------------------------------------------------


def test_create_task_stores_a_queuing_task(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key, cost=7)
        task = await record(repo, uid, key)
        assert (task.task_uid, task.public_key, task.action, task.status) == (uid, key, ACTION, Status.QUEUING)
        assert task.spec == SPEC
        assert task.cost == 7
        assert (task.progress, task.result_keys, task.seeds) == (0.0, (), ())
        assert (task.error_code, task.error_message, task.worker, task.attempt) == (0, "", None, 0)
        assert task.created_at is not None and task.created_at.tzinfo is not None
        assert task.started_at is None and task.finished_at is None
        assert await used(repo, key) == 0  # charged at finish, not before

    run_with_repo(body)


def test_get_many_returns_only_the_owners_tasks(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        a1, a2, b1 = await queued(repo, alice), await queued(repo, alice), await queued(repo, bob)
        found = await repo.get_many([a1, a2, b1, new_uid()], alice)
        assert sorted(t.task_uid for t in found) == sorted([a1, a2])
        assert await repo.get_many([a1, a2], bob) == []
        assert await repo.get_many([], alice) == []

    run_with_repo(body)


def test_open_tasks_lists_queuing_and_running_oldest_first(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        first = await queued(repo, alice)
        second = await running(repo, alice)
        assert await repo.finish_task(await running(repo, alice), ["r.png"], [1])
        assert await repo.fail_task(await running(repo, alice), 501, "boom")
        await repo.request_cancel(await queued(repo, alice))
        third = await queued(repo, alice)
        await queued(repo, bob)
        assert await repo.open_tasks(alice) == [first, second.task_uid, third]
        assert await repo.open_tasks(secrets.token_hex(16)) == []

    run_with_repo(body)


def test_queued_count_counts_queuing_tasks_of_every_key(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        assert await repo.queued_count() == 0
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        await queued(repo, alice)
        await queued(repo, bob)
        await running(repo, alice)
        await repo.request_cancel(await queued(repo, bob))
        assert await repo.queued_count() == 2

    run_with_repo(body)


# --- credits ------------------------------------------------------------------------------------------


def test_insufficient_credits_writes_nothing(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 10)).public_key
        uid = new_uid()
        with pytest.raises(errors.InsufficientCredits, match="costs 11 credits and 10 are available"):
            await repo.create_task(uid, key, ACTION, SPEC, 11)
        assert await repo.get_many([uid], key) == []
        assert await repo.open_tasks(key) == []
        assert await repo.queued_count() == 0
        await queued(repo, key, cost=10)  # exactly the balance is enough

    run_with_repo(body)


def test_an_unknown_key_has_no_credits(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        with pytest.raises(errors.InsufficientCredits, match="costs 1 credits and 0 are available"):
            await repo.create_task(new_uid(), secrets.token_hex(16), ACTION, SPEC, 1)
        assert await repo.queued_count() == 0

    run_with_repo(body)


def test_open_tasks_count_as_spent(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 10)).public_key
        first = await queued(repo, key, cost=6)
        with pytest.raises(errors.InsufficientCredits, match="costs 6 credits and 4 are available"):
            await repo.create_task(new_uid(), key, ACTION, SPEC, 6)
        run = await take(repo, first)
        with pytest.raises(errors.InsufficientCredits):  # running still holds its cost
            await repo.create_task(new_uid(), key, ACTION, SPEC, 6)
        assert await repo.requeue_run(run)
        with pytest.raises(errors.InsufficientCredits):  # so does a task queued again
            await repo.create_task(new_uid(), key, ACTION, SPEC, 6)
        assert await repo.cancel_run(await take(repo, first))  # a cancelled task gives its credits back
        await queued(repo, key, cost=6)

    run_with_repo(body)


def test_used_credits_count_as_spent(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 10)).public_key
        assert await repo.finish_task(await running(repo, key, cost=8), ["r.png"], [1])
        with pytest.raises(errors.InsufficientCredits, match="costs 3 credits and 2 are available"):
            await repo.create_task(new_uid(), key, ACTION, SPEC, 3)
        assert await repo.add_credits(key, 1)
        await queued(repo, key, cost=3)

    run_with_repo(body)


def test_concurrent_create_task_never_overspends(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 50)).public_key
        uids = [new_uid() for _ in range(10)]
        outcomes = await asyncio.gather(
            *(repo.create_task(uid, key, ACTION, SPEC, 10) for uid in uids), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(refused) == 5 and all(isinstance(o, errors.InsufficientCredits) for o in refused)
        accepted = [uid for uid, o in zip(uids, outcomes, strict=True) if o == uid]
        assert sorted(await repo.open_tasks(key)) == sorted(accepted)
        assert await repo.queued_count() == 5

    run_with_repo(body)


# --- transitions ---------------------------------------------------------------------------------


def test_mark_running_takes_a_queued_task_once(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key)
        assert await repo.mark_running(uid, "worker-1") == (domain.Run(uid, "worker-1", 1), SPEC)
        assert await repo.mark_running(uid, "worker-2") is None
        task = await record(repo, uid, key)
        assert (task.status, task.worker, task.attempt, task.progress) == (Status.RUNNING, "worker-1", 1, 0.0)
        assert task.started_at is not None and task.finished_at is None
        assert await repo.mark_running(new_uid(), "worker-1") is None

    run_with_repo(body)


def test_record_progress_only_for_the_current_run(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key)
        assert await repo.record_progress(domain.Run(uid, "worker-1", 1), 0.25) is False  # not taken yet
        assert (await record(repo, uid, key)).progress == 0.0
        run = await take(repo, uid)
        assert await repo.record_progress(run, 0.5) is True
        assert (await record(repo, uid, key)).progress == 0.5
        assert await repo.finish_task(run, ["r.png"], [1])
        assert await repo.record_progress(run, 0.25) is False
        assert (await record(repo, uid, key)).progress == 1.0
        assert await repo.record_progress(domain.Run(new_uid(), "worker-1", 1), 0.5) is False  # unknown

    run_with_repo(body)


@pytest.mark.parametrize("end", ["finish", "fail", "cancel", "requeue"])
def test_a_preview_is_kept_while_running_and_dropped_when_the_task_leaves_running(
    run_with_repo: RunWithRepo, end: str
) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key)
        assert (await record(repo, run.task_uid, key)).preview is None
        assert await repo.record_progress(run, 0.3, "data:image/jpeg;base64,AAAA") is True
        assert await repo.record_progress(run, 0.4) is True  # no new preview: the last one stays
        task = await record(repo, run.task_uid, key)
        assert (task.progress, task.preview) == (0.4, "data:image/jpeg;base64,AAAA")
        if end == "finish":
            assert await repo.finish_task(run, ["r.png"], [1])
        elif end == "fail":
            assert await repo.fail_task(run, 500, "boom")
        elif end == "cancel":
            assert await repo.cancel_run(run)
        else:
            assert await repo.requeue_run(run)
        assert (await record(repo, run.task_uid, key)).preview is None

    run_with_repo(body)


def test_finish_task_charges_exactly_once(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        assert await repo.finish_task(run, ["a.png", "b.png"], [1234, 1235]) is True
        task = await record(repo, run.task_uid, key)
        assert (task.status, task.progress) == (Status.FINISHED, 1.0)
        assert (task.result_keys, task.seeds) == (("a.png", "b.png"), (1234, 1235))
        assert (task.error_code, task.error_message) == (0, "")
        assert task.finished_at is not None
        assert await used(repo, key) == 30
        assert await repo.finish_task(run, ["c.png"], [9]) is False
        assert await used(repo, key) == 30
        assert (await record(repo, run.task_uid, key)).result_keys == ("a.png", "b.png")

    run_with_repo(body)


def test_a_finished_tasks_texts_are_kept_in_order(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key)
        assert await repo.finish_task(run, [], [], ["lora ink: SDXL, sha256 ab", "warning: é ✓"])
        assert (await record(repo, run.task_uid, key)).result_texts == ("lora ink: SDXL, sha256 ab", "warning: é ✓")
        ((polled, _),) = await repo.get_details([run.task_uid], key)  # what ListTasksDetails reads
        assert polled.result_texts == ("lora ink: SDXL, sha256 ab", "warning: é ✓")
        other = await running(repo, key)
        assert await repo.finish_task(other, ["r.png"], [1])
        assert (await record(repo, other.task_uid, key)).result_texts == ()

    run_with_repo(body)


def test_worker_writes_need_a_running_task(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key, cost=30)
        before = await record(repo, uid, key)
        assert await refused_everything(repo, domain.Run(uid, "worker-1", 1))  # a run it never had
        assert await record(repo, uid, key) == before
        assert await refused_everything(repo, domain.Run(new_uid(), "worker-1", 1))
        assert await used(repo, key) == 0

    run_with_repo(body)


def test_fail_task_ends_the_run_with_an_error(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        assert await repo.fail_task(run, 520, "disk full") is True
        task = await record(repo, run.task_uid, key)
        assert (task.status, task.error_code, task.error_message) == (Status.ERROR, 520, "disk full")
        assert task.finished_at is not None
        assert await repo.fail_task(run, 500, "again") is False
        assert (await record(repo, run.task_uid, key)).error_message == "disk full"
        assert await used(repo, key) == 0

    run_with_repo(body)


def test_cancel_run_ends_a_running_task_and_is_never_charged(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        assert await repo.cancel_run(run) is True
        task = await record(repo, run.task_uid, key)
        assert (task.status, task.error_code, task.error_message) == (Status.CANCELED, 510, "Task was cancelled")
        assert task.finished_at is not None
        assert await repo.cancel_run(run) is False
        assert await repo.open_tasks(key) == []
        assert await used(repo, key) == 0

    run_with_repo(body)


def test_cancel_run_of_a_queued_task_is_refused(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key)
        assert await repo.requeue_run(run)  # the task is Queuing again: `run` is not running it
        assert await repo.cancel_run(run) is False
        assert (await record(repo, run.task_uid, key)).status == Status.QUEUING

    run_with_repo(body)


def test_finish_task_after_cancel_run_is_refused_and_not_charged(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        assert await repo.cancel_run(run)
        assert await repo.finish_task(run, ["a.png"], [1]) is False
        task = await record(repo, run.task_uid, key)
        assert (task.status, task.result_keys) == (Status.CANCELED, ())
        assert await used(repo, key) == 0

    run_with_repo(body)


@pytest.mark.parametrize("end", [Status.FINISHED, Status.ERROR, Status.CANCELED])
def test_a_terminal_task_never_changes(run_with_repo: RunWithRepo, end: Status) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        assert await end_task(repo, run, end)
        before = await record(repo, run.task_uid, key)
        assert await repo.mark_running(run.task_uid, "w") is None
        assert await refused_everything(repo, run)
        await repo.request_cancel(run.task_uid)
        assert await record(repo, run.task_uid, key) == before
        assert await used(repo, key) == (30 if end == Status.FINISHED else 0)

    run_with_repo(body)


def test_delete_ended_before_removes_only_tasks_that_ended_before_the_cutoff(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        finished, failed = await running(repo, key), await running(repo, key)
        assert await repo.finish_task(finished, ["f1.png", "f2.png"], [1, 2])
        assert await repo.fail_task(failed, 501, "boom")
        open_uids = [(await running(repo, key)).task_uid, await queued(repo, key)]
        assert await repo.delete_ended_before(datetime.now(UTC) - timedelta(hours=1)) == []
        deleted = await repo.delete_ended_before(datetime.now(UTC) + timedelta(seconds=1))
        assert sorted(t.task_uid for t in deleted) == sorted([finished.task_uid, failed.task_uid])
        assert sorted(key for t in deleted for key in t.result_keys) == ["f1.png", "f2.png"]
        assert all(t.spec == SPEC for t in deleted)
        assert await repo.get_many([finished.task_uid, failed.task_uid], key) == []
        assert sorted(t.task_uid for t in await repo.get_many(open_uids, key)) == sorted(open_uids)
        assert await used(repo, key) == 1  # deleting a task never gives its charge back

    run_with_repo(body)


# --- runs: attempts, requeue and fencing ----------------------------------------------------------


def test_requeue_run_queues_the_task_again_under_a_new_attempt(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run1 = await running(repo, key, cost=30)
        assert run1.attempt == 1
        assert await repo.record_progress(run1, 0.5)
        requeue = await repo.requeue_run(run1)
        assert requeue is not None and (requeue.status, requeue.lost_runs) == (Status.QUEUING, 0)
        task = await record(repo, run1.task_uid, key)
        assert (task.status, task.worker, task.progress, task.attempt) == (Status.QUEUING, None, 0.0, 1)
        assert await repo.open_tasks(key) == [run1.task_uid]
        assert await repo.queued_count() == 1
        run2 = await take(repo, run1.task_uid, "worker-2")
        assert run2 == domain.Run(run1.task_uid, "worker-2", 2)
        task = await record(repo, run1.task_uid, key)
        assert (task.status, task.worker, task.attempt) == (Status.RUNNING, "worker-2", 2)
        assert await used(repo, key) == 0  # charged at finish, not before

    run_with_repo(body)


def test_a_superseded_run_is_refused_and_the_current_one_finishes(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run1 = await running(repo, key, cost=30)
        assert await repo.requeue_run(run1)
        run2 = await take(repo, run1.task_uid, "worker-2")
        before = await record(repo, run1.task_uid, key)
        assert await refused_everything(repo, run1)
        assert await record(repo, run1.task_uid, key) == before
        assert (before.status, before.worker) == (Status.RUNNING, "worker-2")
        assert await used(repo, key) == 0
        assert await repo.finish_task(run2, ["a.png"], [1]) is True
        assert (await record(repo, run1.task_uid, key)).status == Status.FINISHED
        assert await used(repo, key) == 30

    run_with_repo(body)


def test_a_run_with_the_wrong_worker_or_attempt_is_refused(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        before = await record(repo, run.task_uid, key)
        assert await refused_everything(repo, domain.Run(run.task_uid, "worker-2", run.attempt))
        assert await refused_everything(repo, domain.Run(run.task_uid, run.worker, run.attempt + 1))
        assert await record(repo, run.task_uid, key) == before
        assert await used(repo, key) == 0
        assert await repo.finish_task(run, ["a.png"], [1]) is True
        assert await used(repo, key) == 30

    run_with_repo(body)


# --- request_cancel -----------------------------------------------------------------------------------


def test_request_cancel_of_a_queued_task_cancels_it_now(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key, cost=30)
        await repo.request_cancel(uid)
        task = await record(repo, uid, key)
        assert (task.status, task.error_code, task.error_message) == (Status.CANCELED, 510, "Task was cancelled")
        assert task.finished_at is not None
        assert await repo.mark_running(uid, "w") is None  # its job, if it ever ran, would skip it
        assert await repo.open_tasks(key) == []
        assert await used(repo, key) == 0

    run_with_repo(body)


def test_request_cancel_of_a_running_task_leaves_it_to_the_worker(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        run = await running(repo, key, cost=30)
        await repo.request_cancel(run.task_uid)
        assert (await record(repo, run.task_uid, key)).status == Status.RUNNING
        assert await repo.cancel_run(run)  # what the worker writes at its next step
        assert await used(repo, key) == 0

    run_with_repo(body)


def test_request_cancel_of_an_unknown_task_is_a_no_op(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        await repo.request_cancel(new_uid())

    run_with_repo(body)


# --- the procrastinate jobs behind the tasks ------------------------------------------------------


async def jobs_of(app: procrastinate.App, uid: str) -> list[procrastinate.jobs.Job]:
    """The generation jobs deferred for task `uid` (the repository does not expose job ids)."""
    listed = await app.job_manager.list_jobs_async(task=jobs.TASK_NAME)
    return [job for job in listed if job.task_kwargs == {"task_uid": uid}]


async def fetch(app: procrastinate.App, uid: str) -> procrastinate.jobs.Job:
    """What a worker does first: take the next generation job (here, the one of task `uid`)."""
    manager = app.job_manager
    job = await manager.fetch_job(queues=[jobs.QUEUE], worker_id=await manager.register_worker())
    assert job is not None and job.id is not None and job.task_kwargs == {"task_uid": uid}
    return job


async def job_by_id(app: procrastinate.App, job_id: int | None) -> procrastinate.jobs.Job:
    (job,) = await app.job_manager.list_jobs_async(id=job_id)
    return job


def test_create_task_enqueues_one_job(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            (job,) = await jobs_of(backend.app, uid)
            assert (job.queue, job.status) == (jobs.QUEUE, "todo")

    asyncio.run(main())


def test_request_cancel_of_a_queued_task_cancels_its_job(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            await backend.repo.request_cancel(uid)
            (job,) = await jobs_of(backend.app, uid)
            assert job.status == "cancelled"

    asyncio.run(main())


def test_request_cancel_of_a_running_task_asks_its_job_to_abort(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            # what a worker does: take the job, then the task
            job = await fetch(backend.app, uid)
            run = await take(backend.repo, uid)
            assert await backend.repo.record_progress(run, 0.5)
            await backend.repo.request_cancel(uid)
            after = await job_by_id(backend.app, job.id)
            assert (after.status, after.abort_requested) == ("doing", True)

    asyncio.run(main())


def test_request_cancel_of_a_task_just_taken_asks_its_job_to_abort(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            job = await fetch(backend.app, uid)
            run = await take(backend.repo, uid)  # taken: no progress written yet
            await backend.repo.request_cancel(uid)
            after = await job_by_id(backend.app, job.id)
            assert (after.status, after.abort_requested) == ("doing", True)
            assert await backend.repo.cancel_run(run)  # the worker acknowledges the abort

    asyncio.run(main())


def test_request_cancel_racing_mark_running_is_never_lost(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            job = await fetch(backend.app, uid)
            taken, _ = await asyncio.gather(
                backend.repo.mark_running(uid, "worker-1"), backend.repo.request_cancel(uid)
            )
            task = await record(backend.repo, uid, key)
            if taken is None:  # the cancel came first: the worker finds the task cancelled
                assert task.status == Status.CANCELED
            else:  # the worker came first: its job is asked to abort
                assert task.status == Status.RUNNING
                assert (await job_by_id(backend.app, job.id)).abort_requested

    asyncio.run(main())


def test_requeue_run_defers_a_new_job(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            first = await fetch(backend.app, uid)
            assert await backend.repo.requeue_run(await take(backend.repo, uid))
            listed = await jobs_of(backend.app, uid)
            assert len(listed) == 2
            (new,) = [job for job in listed if job.id != first.id]
            assert (new.queue, new.status) == (jobs.QUEUE, "todo")

    asyncio.run(main())


def test_request_cancel_after_a_requeue_asks_the_new_job_to_abort(backend_factory: BackendFactory) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            key = (await backend.repo.create_key("alice", 100)).public_key
            uid = await queued(backend.repo, key)
            await fetch(backend.app, uid)
            assert await backend.repo.requeue_run(await take(backend.repo, uid))
            second = await fetch(backend.app, uid)
            run2 = await take(backend.repo, uid, "worker-2")
            await backend.repo.request_cancel(uid)
            assert (await job_by_id(backend.app, second.id)).abort_requested
            assert await backend.repo.cancel_run(run2)

    asyncio.run(main())


def test_run_of_tells_the_status_and_the_run_that_last_took_the_task(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key)
        assert await repo.run_of(uid) == (Status.QUEUING, None)
        run = await take(repo, uid, "worker-7")
        assert await repo.run_of(uid) == (Status.RUNNING, run)
        assert await repo.finish_task(run, ["a.png"], [1])
        assert await repo.run_of(uid) == (Status.FINISHED, run)  # a lost reply can be checked afterwards
        requeued = await queued(repo, key)
        first = await take(repo, requeued)
        assert await repo.requeue_run(first)
        assert await repo.run_of(requeued) == (Status.QUEUING, None)
        assert await repo.run_of(new_uid()) is None

    run_with_repo(body)


def test_queue_positions_count_every_key_queued_before(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        first, second, third = await queued(repo, alice), await queued(repo, bob), await queued(repo, alice)
        assert await repo.queue_positions([third, first, second]) == {first: 1, second: 2, third: 3}
        await take(repo, first)
        assert await repo.queue_positions([first, second, third]) == {second: 1, third: 2}  # running: none
        assert await repo.queue_positions([new_uid()]) == {}

    run_with_repo(body)


def test_list_tasks_filters_by_status_key_and_model_newest_first(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        alice = (await repo.create_key("alice", 100)).public_key
        bob = (await repo.create_key("bob", 100)).public_key
        a1 = await queued(repo, alice)
        other = new_uid()
        await repo.create_task(other, bob, ACTION, dataclasses.replace(SPEC, model_code="other-model"), 1)
        a2 = (await running(repo, alice)).task_uid
        assert [t.task_uid for t in await repo.list_tasks([], None, None, 10)] == [a2, other, a1]
        assert [t.task_uid for t in await repo.list_tasks([], None, None, 2)] == [a2, other]
        assert [t.task_uid for t in await repo.list_tasks([Status.RUNNING], None, None, 10)] == [a2]
        assert [t.task_uid for t in await repo.list_tasks([], alice, None, 10)] == [a2, a1]
        assert [t.task_uid for t in await repo.list_tasks([], None, "other-model", 10)] == [other]
        both = [Status.QUEUING, Status.RUNNING]
        assert [t.task_uid for t in await repo.list_tasks(both, alice, SPEC.model_code, 10)] == [a2, a1]

    run_with_repo(body)

"""Attempt limits (issue 22), on both repositories: every run's end is recorded with its cause, and a task
whose runs were lost more than `max_lost` times ends Error 505 instead of being queued again."""

from __future__ import annotations

from picserve import domain, errors
from picserve.tasks.repository import TaskRepository
from tests.contract.test_repository import RunWithRepo, queued, record, take, used

Status = domain.TaskStatus
End = domain.RunEnd


def test_the_third_lost_run_ends_the_task_505_uncharged(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key, cost=30)
        causes = [End.DEVICE_LOST, End.TIMED_OUT, End.DEVICE_LOST]
        outcomes = []
        for attempt, cause in enumerate(causes, start=1):
            run = await take(repo, uid, f"worker-{attempt}")
            requeue = await repo.requeue_run(run, cause, max_lost=2, detail=f"loss {attempt}")
            assert requeue is not None
            outcomes.append((requeue.status, requeue.lost_runs))
        assert outcomes == [(Status.QUEUING, 1), (Status.QUEUING, 2), (Status.ERROR, 3)]

        task = await record(repo, uid, key)
        assert (
            (task.status, task.error_code) == (Status.ERROR, errors.StoppedItsWorkers.ret_code) == (Status.ERROR, 505)
        )
        assert task.error_message == (
            "this task stopped its workers: 3 runs ended without it (its worker's device failed: 2; "
            "it hung past its deadline: 1); it was not run again, and nothing was charged"
        )
        assert await used(repo, key) == 0 and await repo.open_tasks(key) == []
        assert await repo.mark_running(uid, "worker-4") is None  # never run again

        runs = await repo.runs_of(uid)
        assert [(r.attempt, r.worker, r.ended_as, r.detail) for r in runs] == [
            (1, "worker-1", End.DEVICE_LOST, "loss 1"),
            (2, "worker-2", End.TIMED_OUT, "loss 2"),
            (3, "worker-3", End.DEVICE_LOST, "loss 3"),
        ]
        assert all(r.started_at is not None and r.started_at <= r.ended_at for r in runs)

    run_with_repo(body)


def test_a_shutdown_hand_back_is_not_a_loss(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        uid = await queued(repo, key, cost=5)
        for attempt in range(1, 5):  # four shutdowns in a row: never given up
            requeue = await repo.requeue_run(await take(repo, uid, f"w{attempt}"), End.REQUEUED, max_lost=0)
            assert requeue is not None and (requeue.status, requeue.lost_runs) == (Status.QUEUING, 0)
        one_loss = await repo.requeue_run(await take(repo, uid), End.TIMED_OUT, max_lost=1)
        assert one_loss is not None and (one_loss.status, one_loss.lost_runs) == (Status.QUEUING, 1)
        run = await take(repo, uid)
        assert await repo.finish_task(run, ["a.png"], [1])
        assert await used(repo, key) == 5
        ends = [r.ended_as for r in await repo.runs_of(uid)]
        assert ends == [End.REQUEUED] * 4 + [End.TIMED_OUT, End.FINISHED]

    run_with_repo(body)


def test_every_end_is_recorded_and_a_superseded_run_records_nothing(run_with_repo: RunWithRepo) -> None:
    async def body(repo: TaskRepository) -> None:
        key = (await repo.create_key("alice", 100)).public_key
        ended = {}
        for end in (End.FINISHED, End.FAILED, End.CANCELED):
            uid = await queued(repo, key)
            run = await take(repo, uid, "worker-9")
            if end is End.FINISHED:
                assert await repo.finish_task(run, ["a.png"], [1])
            elif end is End.FAILED:
                assert await repo.fail_task(run, 502, "out of memory")
            else:
                assert await repo.cancel_run(run)
            # the run is over: none of its writes is taken, and none adds a record
            assert not await repo.fail_task(run, 500, "late")
            assert await repo.requeue_run(run, End.DEVICE_LOST) is None
            ended[end] = [(r.attempt, r.worker, r.ended_as, r.detail) for r in await repo.runs_of(uid)]
        assert ended == {
            End.FINISHED: [(1, "worker-9", End.FINISHED, "")],
            End.FAILED: [(1, "worker-9", End.FAILED, "out of memory")],
            End.CANCELED: [(1, "worker-9", End.CANCELED, "")],
        }
        assert await repo.runs_of("no-such-task") == []

    run_with_repo(body)


def test_the_digest_names_the_parameters_not_the_prompt() -> None:
    first = domain.GenerationSpec(model_code="m", prompt="a secret prompt", width=512, height=512)
    assert domain.spec_digest(first) == domain.spec_digest(domain.GenerationSpec.from_json(first.to_dict()))
    assert domain.spec_digest(first) != domain.spec_digest(first.evolve(seed=first.seed + 1))
    assert domain.spec_digest(first).startswith("generation:") and "secret" not in domain.spec_digest(first)

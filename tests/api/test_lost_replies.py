"""A write applied by the database whose reply was lost (the connection broke after the statement was
sent) must be read back, not guessed: a lost start hands the task back to the queue, a lost outcome
counts as written. The in-memory repository plays the database; `LossyRepository` applies a chosen
write, then raises what a broken connection raises, once."""

from __future__ import annotations

from picserve import errors
from picserve.engine.fake import FakeEngine
from picserve.tasks.memory import InMemoryRepository
from picserve.worker import jobs, process

from .conftest import Stack, request


class LossyRepository(InMemoryRepository):
    """Applies the first call of each method named in `lose`, then loses its reply (ServerBusy, as the
    PostgreSQL repository raises for a connection lost mid-statement)."""

    def __init__(self, inner: InMemoryRepository, lose: set[str]) -> None:
        self.__dict__.update(inner.__dict__)  # the same state: a view on the stack's repository
        self.lose = set(lose)

    async def mark_running(self, task_uid, worker):  # type: ignore[override]
        started = await super().mark_running(task_uid, worker)
        self._maybe_lose("mark_running")
        return started

    async def finish_task(self, run, result_keys, seeds, texts=()):  # type: ignore[override]
        written = await super().finish_task(run, result_keys, seeds, texts)
        self._maybe_lose("finish_task")
        return written

    def _maybe_lose(self, name: str) -> None:
        if name in self.lose:
            self.lose.discard(name)
            raise errors.DatabaseUnreachable("database unreachable (OperationalError); retry later")


def run_lossy(stack: Stack, lose: set[str]) -> LossyRepository:
    lossy = LossyRepository(stack.repo, lose)
    runtime = jobs.WorkerRuntime(repo=lossy, engine=FakeEngine(), store=stack.store, name="lossy-worker")
    runtime.retry.first_delay = 0.01
    stack.api.portal.call(process.work, stack.repo.app, runtime, stack.settings, True)
    return lossy


def test_a_start_whose_reply_was_lost_is_handed_back_and_runs_once(stack: Stack) -> None:
    client = stack.client()
    uid = client.generate_images_sdxl(**request())  # type: ignore[arg-type]
    run_lossy(stack, {"mark_running"})
    # the lost start was requeued (a new job), which the same burst worker then ran to the end
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 1
    task = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)[0]
    assert task.attempt == 2  # the lost run, then the real one
    assert len(stack.store) == 1  # one result: nothing ran twice to completion


def test_an_outcome_whose_reply_was_lost_counts_as_written_and_keeps_its_files(stack: Stack) -> None:
    client = stack.client()
    uid = client.generate_images_sdxl(**request(BatchSize=2))  # type: ignore[arg-type]
    run_lossy(stack, {"finish_task"})
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 2
    assert all(client.fetch(url) for url in detail["ImgList"])  # its files were not deleted
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"]  # charged once

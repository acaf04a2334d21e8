"""The worker's run protocol on the in-memory repository and store, with FakeEngine: cancel stops a
running task within a step and leaves no files, the engine never runs two generations at once, a
shutdown hands the task back, and a superseded run's results are refused and deleted."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

from picserve import domain
from picserve.engine.fake import FakeEngine
from picserve.worker import jobs, process

from .conftest import Stack, request


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Watched(FakeEngine):
    """A FakeEngine that records how many generations run at once, and can stall before its steps
    (as a model load does, with no step callback)."""

    def __init__(self, step_seconds: float = 0.0, load_seconds: float = 0.0):
        super().__init__(step_seconds)
        self.load_seconds = load_seconds
        self.active = self.most_active = 0
        self.spans: list[tuple[float, float]] = []
        self._count = threading.Lock()

    def generate(self, spec, on_step=None, on_preview=None):
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        started = time.monotonic()
        try:
            time.sleep(self.load_seconds)
            return super().generate(spec, on_step)
        finally:
            self.spans.append((started, time.monotonic()))
            with self._count:
                self.active -= 1


@dataclasses.dataclass
class Running:
    stack: Stack
    task: asyncio.Task | None = None
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)


def start_worker(stack: Stack, engine, shutdown_grace: float = 20.0) -> Running:
    """The real worker loop in the app's event loop, until `stop`ped (as SIGTERM stops it)."""
    settings = dataclasses.replace(stack.settings, shutdown_grace=shutdown_grace)
    runtime = jobs.WorkerRuntime(repo=stack.repo, engine=engine, store=stack.store, name="w1")
    running = Running(stack)

    async def run() -> None:
        running.task = asyncio.current_task()
        try:
            await process.work(stack.repo.app, runtime, settings, False)
        finally:
            running.ended.set()

    stack.api.portal.start_task_soon(run)
    until(lambda: running.task is not None)
    return running


def stop(running: Running) -> None:
    """Cancel the worker (procrastinate then shuts down gracefully) and wait until it has."""
    assert running.task is not None
    running.stack.api.portal.call(running.task.cancel)
    assert running.ended.wait(30), "the worker did not stop"


def status(client, uid) -> str:
    return client.list_tasks_details([uid])[0]["Status"]


def test_cancel_stops_a_running_task_within_a_step_and_leaves_nothing(stack, client):
    engine = Watched(step_seconds=0.05)
    uid = client.generate_images_sdxl(**request(MainModel={"ModelCode": "fast-xl", "InferenceParams": {"Steps": 100}}))
    running = start_worker(stack, engine)
    try:
        until(lambda: client.list_tasks_details([uid])[0]["Progress"] > 0)
        asked = time.monotonic()
        client.cancel_task([uid])
        until(lambda: status(client, uid) == "Canceled")
        # the abort is polled every second, then the engine stops at its next step (0.05 s)
        assert time.monotonic() - asked < 2.5
        until(lambda: engine.active == 0)
    finally:
        stop(running)
    detail = client.list_tasks_details([uid])[0]
    assert (detail["ErrorCode"], detail["ImgList"], detail["ConsumeApiPoint"]) == (510, [], 0)
    assert engine.spans[0][1] - engine.spans[0][0] < 3  # 100 steps would take 5 s
    assert len(stack.store) == 0 and client.get_credit_balance()["UsedCredits"] == 0


def test_the_next_task_waits_for_a_cancelled_engine_call_to_return(stack, client):
    # The cancel arrives during a "model load" that has no step callback: the job must keep the
    # engine until that call returns, or the next task would run beside it.
    engine = Watched(load_seconds=0.4)  # twice: the cancelled task's load, then the next task's
    first, second = (client.generate_images_sdxl(**request(Seed=i)) for i in (1, 2))
    running = start_worker(stack, engine)
    try:
        # the engine call under way, not only the task marked Running: a cancel that came between the two
        # would end the task before its engine call, and nothing would be left to wait for
        until(lambda: engine.active == 1)
        client.cancel_task([first])
        until(lambda: status(client, second) == "Finished", timeout=20)
    finally:
        stop(running)
    assert status(client, first) == "Canceled"
    assert engine.most_active == 1
    (_, first_end), (second_start, _) = engine.spans
    assert second_start >= first_end


def test_a_shutdown_requeues_the_running_task_and_never_cancels_it(stack, client):
    engine = Watched(step_seconds=0.05)
    uid = client.generate_images_sdxl(**request(MainModel={"ModelCode": "fast-xl", "InferenceParams": {"Steps": 100}}))
    running = start_worker(stack, engine, shutdown_grace=0.2)
    until(lambda: client.list_tasks_details([uid])[0]["Progress"] > 0)
    stop(running)
    detail = client.list_tasks_details([uid])[0]
    assert (detail["Status"], detail["ImgList"], detail["ErrorCode"]) == ("Queuing", [], 0)
    assert len(stack.store) == 0

    stack.run_worker()  # the task's new job runs it to the end
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 1
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"]


def test_a_superseded_run_writes_nothing_and_deletes_its_files(stack, client):
    # While the first run generates, its task is queued again and taken by another worker (what the
    # stalled-worker sweep does to a frozen worker): the first run's results must not land.
    uid = client.generate_images_sdxl(**request())
    portal, repo = stack.api.portal, stack.repo

    class Superseded(FakeEngine):
        def generate(self, spec, on_step=None, on_preview=None):
            generated = super().generate(spec, on_step)
            assert portal.call(repo.requeue_run, domain.Run(uid, "fast-worker", 1))
            assert portal.call(repo.mark_running, uid, "other-worker") is not None
            return generated

    stack.run_worker(Superseded())
    (record,) = portal.call(repo.get_many, [uid], client.public_key)
    assert (record.status, record.worker, record.attempt, record.result_keys) == (
        domain.TaskStatus.RUNNING,
        "other-worker",
        2,
        (),
    )
    assert len(stack.store) == 0 and client.get_credit_balance()["UsedCredits"] == 0


def test_progress_is_written_while_running(stack, client):
    engine = Watched(step_seconds=0.05)  # 20 steps: a second of progress to see part-way
    uid = client.generate_images_sdxl(**request(MainModel={"ModelCode": "fast-xl", "InferenceParams": {"Steps": 20}}))
    running = start_worker(stack, engine)
    try:
        seen = set()
        until(lambda: seen.add(client.list_tasks_details([uid])[0]["Progress"]) or status(client, uid) == "Finished")
    finally:
        stop(running)
    assert any(0 < p < 1 for p in seen)

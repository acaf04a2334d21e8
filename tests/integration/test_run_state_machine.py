"""The run protocol as a state machine (hypothesis `RuleBasedStateMachine`, as cog tests its worker).

Real worker loops (`tasks.process.work`, procrastinate on the real PostgreSQL), each on its own thread
and event loop with a FakeEngine, are driven through submits, cancels at every phase, kills (the
loop stops dead: nothing more of that worker runs), freezes past the heartbeat timeout (the loop is
blocked, then thawed), graceful shutdowns, and the stalled-worker sweep. After every step: a task
that ended never changes again, a key is charged exactly the cost of its finished tasks, a finished
task has one result per image, and no engine ever runs two generations at once. After each run,
with every worker stopped and the queue drained: every task ended exactly once, and the store holds
exactly the finished tasks' results.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from picserve import domain
from picserve.config import Settings
from picserve.engine.fake import FakeEngine
from picserve.keycipher import KeyCipher
from picserve.storage.memory import MemoryStore
from picserve.tasks import database, recovery
from picserve.tasks.service import TaskService
from picserve.worker import jobs, process

T = TypeVar("T")

STALLED_AFTER = 0.6
CIPHER = KeyCipher.generate()


class Controller:
    """An event loop on its own thread holding the test's database handle."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._opened = database.open_database(
            url, max_size=4, idle_transaction_timeout=2 * STALLED_AFTER, cipher=CIPHER
        )
        self.db = self.call(self._opened.__aenter__)

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout=60)

    def close(self) -> None:
        try:
            self.call(self._opened.__aexit__, None, None, None)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            if not self.thread.is_alive():
                close_loop(self.loop)


class Counted(FakeEngine):
    """FakeEngine that records the most generations it ever ran at once."""

    def __init__(self) -> None:
        super().__init__(step_seconds=0.02)
        self.active = self.most_active = 0
        self._lock = threading.Lock()

    def generate(self, spec, on_step=None, on_preview=None):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            return super().generate(spec, on_step)
        finally:
            with self._lock:
                self.active -= 1


class WorkerThread:
    """One worker: the real worker loop on its own thread and event loop, which a test can freeze
    (block), thaw, kill (stop dead, as SIGKILL) or shut down (as SIGTERM)."""

    def __init__(self, url: str, config: Settings, store: MemoryStore, name: str) -> None:
        self.url, self.config, self.store, self.name = url, config, store, name
        self.engine = Counted()
        self.loop = asyncio.new_event_loop()
        self.main: asyncio.Task[None] | None = None
        self.ready, self.ended, self._thawed = threading.Event(), threading.Event(), threading.Event()
        self.frozen = self.killed = False
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(30), f"{name} did not start"

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._work())
        except (RuntimeError, asyncio.CancelledError):  # killed (loop stopped) or shut down
            pass
        finally:
            self.ended.set()

    async def _work(self) -> None:
        self.main = asyncio.current_task()
        async with database.open_database(
            self.url, max_size=4, idle_transaction_timeout=2 * STALLED_AFTER, cipher=CIPHER
        ) as db:
            runtime = jobs.WorkerRuntime(
                repo=db.repo, engine=self.engine, store=self.store, name=self.name, progress_interval=0.0
            )
            self.ready.set()
            await process.work(db.app, runtime, self.config)

    def freeze(self) -> None:
        self._thawed.clear()
        self.loop.call_soon_threadsafe(self._thawed.wait)  # blocks the loop: no heartbeat, no write
        self.frozen = True

    def thaw(self) -> None:
        self._thawed.set()
        self.frozen = False

    def kill(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)  # nothing of this worker runs again
        self.thaw()
        self.killed = True
        assert self.ended.wait(30)

    def shutdown(self) -> None:
        assert self.main is not None
        self.thaw()
        self.loop.call_soon_threadsafe(self.main.cancel)  # procrastinate's graceful stop
        assert self.ended.wait(60), f"{self.name} did not shut down"

    def reap(self) -> None:
        """Once the run's checks are done: close this worker's event loop, first ending what a kill left
        in it (its database pool, procrastinate's worker tasks). A killed worker's loop is stopped with
        those still pending; left to the garbage collector, the loop is closed before them, and their
        finalizers fail with "Event loop is closed" (unraisable exceptions, in whichever test runs then)."""
        if not self.ended.is_set():  # still running (a check failed before its shutdown): stop it dead
            self.kill()
        close_loop(self.loop)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close `loop`, which no thread runs any more: its pending tasks cancelled and awaited (their
    `finally` and `async with` blocks close what they opened), then its async generators and executor."""
    if loop.is_closed():
        return
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=30))
        for task in pending:  # retrieved: a killed worker's task may end on its dead connection
            if task.done() and not task.cancelled():
                task.exception()
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def run_protocol(url: str) -> None:
    config = Settings(heartbeat_interval=0.1, stalled_after=STALLED_AFTER, shutdown_grace=0.2, progress_interval=0.0)

    class RunProtocol(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.control = Controller(url)
            self.repo = self.control.db.repo
            self.store = MemoryStore(3600)
            self.service = TaskService(self.repo, self.store, credit_divisor=1, max_queued=1000)
            self.account = self.control.call(self.repo.create_key, "machine", 10**9)
            self.workers: list[WorkerThread] = []
            self.uids: list[str] = []
            self.ended: dict[str, domain.TaskStatus] = {}

        def live(self) -> list[WorkerThread]:
            return [w for w in self.workers if not w.ended.is_set()]

        def tasks(self) -> list[domain.TaskRecord]:
            return self.control.call(self.repo.get_many, self.uids, self.account.public_key)

        @rule(steps=st.integers(2, 8), batch=st.integers(1, 2))
        def submit(self, steps: int, batch: int) -> None:
            spec = domain.GenerationSpec(
                model_code="fake", prompt="x", width=8, height=8, steps=steps, batch_size=batch, seed=len(self.uids)
            )
            self.uids.append(self.control.call(self.service.submit, self.account, "GenerateImagesSDXL", spec))

        @precondition(lambda self: self.uids)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            uid = data.draw(st.sampled_from(self.uids))
            self.control.call(self.service.cancel, self.account, [uid])

        @precondition(lambda self: len(self.live()) < 2)
        @rule()
        def start_worker(self) -> None:
            self.workers.append(WorkerThread(url, config, self.store, f"w{len(self.workers)}"))

        @precondition(lambda self: any(not w.frozen for w in self.live()))
        @rule(data=st.data(), action=st.sampled_from(["freeze", "kill", "shutdown"]))
        def disturb(self, data: st.DataObject, action: str) -> None:
            target = data.draw(st.sampled_from([w for w in self.live() if not w.frozen]))
            getattr(target, action)()

        @precondition(lambda self: any(w.frozen for w in self.live()))
        @rule(data=st.data())
        def thaw(self, data: st.DataObject) -> None:
            data.draw(st.sampled_from([w for w in self.live() if w.frozen])).thaw()

        @rule(seconds=st.sampled_from([0.05, 0.2]))
        def wait(self, seconds: float) -> None:
            time.sleep(seconds)

        @rule()
        def sweep_after_the_heartbeat_timeout(self) -> None:
            time.sleep(STALLED_AFTER + 0.2)
            self.control.call(recovery.sweep, self.control.db, STALLED_AFTER)

        @invariant()
        def protocol_holds(self) -> None:
            # the charges read before and after the tasks: live workers may finish one between two reads
            charged_before = self.control.call(self.repo.get_account, self.account.public_key).used_credits
            tasks = self.tasks()
            for task in tasks:
                if task.task_uid in self.ended:
                    assert task.status == self.ended[task.task_uid], f"an ended task changed: {task}"
                elif task.status.is_terminal:
                    self.ended[task.task_uid] = task.status
                if task.status is domain.TaskStatus.FINISHED:
                    assert len(task.result_keys) == task.spec.batch_size
                else:
                    assert task.result_keys == ()
            charged_after = self.control.call(self.repo.get_account, self.account.public_key).used_credits
            finished = sum(t.cost for t in tasks if t.status is domain.TaskStatus.FINISHED)
            # charged once if and only if finished (exactly, once every worker has stopped: teardown)
            assert charged_before <= finished <= charged_after, "charged once if and only if finished"
            assert all(w.engine.most_active <= 1 for w in self.workers)

        def teardown(self) -> None:
            try:
                for w in self.live():
                    w.shutdown()
                time.sleep(STALLED_AFTER + 0.2)  # killed workers' jobs go back to the queue
                self.control.call(recovery.sweep, self.control.db, STALLED_AFTER)
                runtime = jobs.WorkerRuntime(repo=self.repo, engine=Counted(), store=self.store, name="drain")
                self.control.call(process.work, self.control.db.app, runtime, config, True)
                tasks = self.tasks()
                self.protocol_holds()
                assert all(t.status.is_terminal for t in tasks), [t.status for t in tasks]
                kept = {key for t in tasks for key in t.result_keys}
                assert len(self.store) == len(kept), "result files exist only for finished tasks"
                assert all(self.store.get(key) is not None for key in kept)
            finally:
                for w in self.workers:
                    w.thaw()
                for w in self.workers:
                    w.reap()
                self.control.close()

    run_state_machine_as_test(
        RunProtocol,
        settings=settings(
            max_examples=6, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


@pytest.mark.timeout(900)
# every loop is closed by the test (WorkerThread.reap, Controller.close): an unraisable exception fails it
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_the_run_protocol_holds_under_cancels_kills_freezes_and_shutdowns(database_url):
    run_protocol(database_url)
    gc.collect()  # whatever a run left to finalize is finalized here, in this test, not in a later one

"""Run deadlines (issue 22, worker/deadline.py): a run whose engine call hangs while the worker's loop
lives is abandoned at its deadline, its task finishes on the next attempt, and the worker stops to be
started again; a slow run that keeps making steps is left alone."""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from picserve import domain, metrics
from picserve.config import Settings
from picserve.engine.base import Generated, PreviewCallback, StepCallback
from picserve.engine.fake import FakeEngine
from picserve.keycipher import KeyCipher
from picserve.tasks import database, workers
from picserve.worker import deadline, jobs, process

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        database_url=database_url,
        heartbeat_interval=0.2,
        stalled_after=2.0,
        progress_interval=0.0,
        shutdown_grace=2.0,
        device="cpu",
        affinity_wait=0.0,
        # a run may be silent for 1.5 s at most (no measured speed yet: the cap), then has 3 s to stop
        run_deadline_floor=1.0,
        run_deadline_cap=1.5,
        run_deadline_grace=3.0,
    )


class HangingEngine(FakeEngine):
    """A FakeEngine whose engine call blocks, without a step, until `release` is set: a deadlock in a
    native library, as far as the worker can tell."""

    def __init__(self) -> None:
        super().__init__(step_seconds=0.0)
        self.release = threading.Event()

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        self.calls.append(spec)
        self.release.wait(120)
        return super().generate(spec, on_step, on_preview)


async def _task(db: database.Database, steps: int = 2, webhook: domain.Webhook | None = None) -> tuple[str, str]:
    account = await db.repo.create_key("k", 1000)
    spec = domain.GenerationSpec(model_code="model-x", prompt="a cat", width=8, height=8, steps=steps)
    uid = await db.repo.create_task(
        secrets.token_hex(8), account.public_key, "GenerateImagesSDXL", spec, 7, webhook=webhook
    )
    return account.public_key, uid


async def _task_row(db: database.Database, uid: str) -> dict[str, Any]:
    from psycopg.rows import dict_row

    async with db.pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT status, worker, attempt, error_code FROM picserve_tasks WHERE task_uid = %s", (uid,)
        )
        row = await cur.fetchone()
        assert row is not None
        return row


def _timed_out() -> float:
    sample = metrics.WORKER_REGISTRY.get_sample_value
    return sample("picserve_lost_runs_total", {"cause": "timed_out", "task": "requeued"}) or 0.0


def test_a_hung_run_is_abandoned_at_its_deadline_and_the_task_finishes_on_the_next_attempt(
    settings: Settings,
) -> None:
    async def main() -> None:
        url = settings.database_url or ""
        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            key, uid = await _task(db)
            before = _timed_out()
            hanging = HangingEngine()
            try:
                # not a burst worker: only the hang stops it, as a broken device would (exit code 75)
                started = asyncio.get_running_loop().time()
                running = asyncio.create_task(process.run_worker(settings, url, name="stuck", engine=hanging))
                with pytest.raises(jobs.DeviceFailure, match="the engine hung") as failure:
                    await asyncio.wait_for(running, 60)
                took = asyncio.get_running_loop().time() - started
                assert "gave no sign of life for 1.5 s and did not stop within 3 s" in str(failure.value)
                assert len(hanging.calls) == 1 and not hanging.release.is_set()  # still stuck, left behind
                assert took < 20, took

                # queued again, uncharged, the hang recorded as a loss; the worker marked unhealthy
                assert await _task_row(db, uid) == {"status": "Queuing", "worker": None, "attempt": 1, "error_code": 0}
                [run] = await db.repo.runs_of(uid)
                assert (run.worker, run.ended_as, run.detail) == (
                    "stuck",
                    domain.RunEnd.TIMED_OUT,
                    "no sign of life for 1.5 s",
                )
                assert _timed_out() == before + 1
                async with db.pool.connection() as conn:
                    listed = {w.name: w for w in await workers.list_workers(conn, settings.stalled_after)}
                assert "the engine hung" in (listed["stuck"].unhealthy or "")

                # the next attempt, on a healthy worker, finishes and is charged once
                await asyncio.wait_for(
                    process.run_worker(settings, url, name="healthy", engine=FakeEngine(), burst=True), 60
                )
                task = await _task_row(db, uid)
                assert (task["status"], task["worker"], task["attempt"]) == ("Finished", "healthy", 2)
                account = await db.repo.get_account(key)
                assert account is not None and account.used_credits == 7
                ends = [r.ended_as for r in await db.repo.runs_of(uid)]
                assert ends == [domain.RunEnd.TIMED_OUT, domain.RunEnd.FINISHED]
            finally:
                hanging.release.set()  # let the stuck thread end with the test

    asyncio.run(main())


class SilentStartEngine(FakeEngine):
    """Silent for `silence` seconds before its first step (a stuck model load that does come back):
    told to stop at its deadline, it stops at that first step, within the grace."""

    def __init__(self, silence: float) -> None:
        super().__init__(step_seconds=0.0)
        self.silence = silence

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        threading.Event().wait(self.silence)
        return super().generate(spec, on_step, on_preview)


def test_a_run_that_stops_when_told_keeps_its_worker_and_the_third_timeout_ends_the_task(
    settings: Settings,
) -> None:
    async def main() -> None:
        url = settings.database_url or ""
        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            key, uid = await _task(db, webhook=domain.Webhook("http://127.0.0.1:9/hook", ("completed",)))
            silent = SilentStartEngine(silence=2.5)  # past the 1.5 s deadline, well within its 3 s grace
            # one burst worker takes all three attempts: it survives each (the engine call came back)
            await asyncio.wait_for(process.run_worker(settings, url, name="silent", engine=silent, burst=True), 60)
            assert len(silent.calls) == 3
            task = await _task_row(db, uid)
            assert (task["status"], task["attempt"], task["error_code"]) == ("Error", 3, 505)
            [detail] = await db.repo.get_many([uid], key)
            assert detail.error_message.startswith("this task stopped its workers: 3 runs ended without it")
            assert "it hung past its deadline: 3" in detail.error_message
            ends = [(r.attempt, r.ended_as) for r in await db.repo.runs_of(uid)]
            assert ends == [(n, domain.RunEnd.TIMED_OUT) for n in (1, 2, 3)]
            account = await db.repo.get_account(key)
            assert account is not None and account.used_credits == 0
            async with db.pool.connection() as conn:  # its webhook, as for any task that ends
                cur = await conn.execute(
                    "SELECT event, task_status FROM picserve_webhook_deliveries WHERE task_uid = %s", (uid,)
                )
                assert await cur.fetchall() == [("completed", "Error")]

    asyncio.run(main())


def test_a_slow_run_that_makes_steps_is_left_alone(settings: Settings) -> None:
    # 12 steps of 0.3 s: 3.6 s in all, twice the 1.5 s deadline, each step well within it
    async def main() -> None:
        url = settings.database_url or ""
        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            _, uid = await _task(db, steps=12)
            slow = FakeEngine(step_seconds=0.3)
            await asyncio.wait_for(process.run_worker(settings, url, name="slow", engine=slow, burst=True), 60)
            task = await _task_row(db, uid)
            assert (task["status"], task["attempt"]) == ("Finished", 1)
            assert [r.ended_as for r in await db.repo.runs_of(uid)] == [domain.RunEnd.FINISHED]

    asyncio.run(main())


def test_the_limit_scales_with_the_work_at_the_measured_speed() -> None:
    policy = deadline.DeadlinePolicy(factor=4, floor=60, cap=600)
    assert policy.limit(10**9) == 600  # no speed known: the cap
    speeds = deadline.Speedometer()
    speeds.record("generation", 1024 * 1024 * 30, 10.0)  # ~3.1 M pixel·steps/s
    speed = speeds.speed("generation")
    assert policy.limit(1024 * 1024 * 30, speed) == 60  # 4 × 10 s = 40 s: the floor
    assert policy.limit(1024 * 1024 * 30 * 4, speed) == pytest.approx(160)  # four images: 4 × 40 s
    assert policy.limit(1024 * 1024 * 30 * 100, speed) == 600  # capped
    assert deadline.DeadlinePolicy(speed=1e6, floor=1, cap=100).limit(5e6) == 20  # the assumed speed
    assert deadline.DeadlinePolicy(cap=0).limit(1) == float("inf")  # off
    with pytest.raises(ValueError, match="PICSERVE_RUN_DEADLINE_FLOOR"):
        deadline.DeadlinePolicy(floor=100, cap=10)

"""A worker whose device breaks (a sticky CUDA error) requeues its task, marks itself unhealthy and
stops with exit code 75; another worker then runs the task (worker/jobs.py, engine/faults.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from picserve import cli, domain, metrics
from picserve.config import Settings
from picserve.engine.base import Generated, PreviewCallback, StepCallback
from picserve.engine.fake import FakeEngine
from picserve.keycipher import KeyCipher
from picserve.tasks import database, workers
from picserve.worker import jobs, process

pytestmark = pytest.mark.postgres

ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
    "might be incorrect."
)


class BrokenEngine(FakeEngine):
    """A FakeEngine whose device breaks at its first step: `error()` is what the engine call raises."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        super().__init__(step_seconds=0.0)
        self.error = error

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        self.calls.append(spec)
        self._loaded = [spec.model_code]
        if on_step is not None:
            on_step(0.0)
        raise self.error()


def _accelerator_error() -> BaseException:
    torch = pytest.importorskip("torch")
    return torch.AcceleratorError(ILLEGAL_ACCESS)


ERRORS = {
    "RuntimeError": lambda: RuntimeError(ILLEGAL_ACCESS),
    # as the engine may wrap it: the sticky error is the cause
    "wrapped": lambda: _wrapped(RuntimeError("CUDA error: unspecified launch failure")),
}


def _wrapped(cause: BaseException) -> BaseException:
    try:
        raise cause
    except RuntimeError as exc:
        error = ValueError("decoding failed")
        error.__cause__ = exc
        return error


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
        affinity_wait=2.0,
    )


def _failures() -> float:
    return metrics.WORKER_REGISTRY.get_sample_value("picserve_worker_device_failures_total", {"device": "cpu"}) or 0.0


async def _task(db: database.Database, model: str = "model-x") -> tuple[str, str]:
    account = await db.repo.create_key("k", 1000)
    spec = domain.GenerationSpec(model_code=model, prompt="a cat", width=8, height=8, steps=2)
    uid = await db.repo.create_task(secrets.token_hex(8), account.public_key, "GenerateImagesSDXL", spec, 7)
    return account.public_key, uid


async def _row(db: database.Database, query: Any, params: dict[str, Any]) -> dict[str, Any]:
    from psycopg.rows import dict_row

    async with db.pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return row


@pytest.mark.parametrize("kind", ["RuntimeError", "wrapped", "AcceleratorError"])
def test_a_broken_device_requeues_the_task_and_stops_the_worker(settings: Settings, kind: str) -> None:
    error = _accelerator_error if kind == "AcceleratorError" else ERRORS[kind]
    if kind == "AcceleratorError":
        error()  # skipped where torch has no AcceleratorError

    async def main() -> None:
        url = settings.database_url or ""
        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            key, uid = await _task(db)
            before = _failures()
            broken = BrokenEngine(error)
            # not a burst worker: only the device failure stops it
            running = asyncio.create_task(process.run_worker(settings, url, name="broken", engine=broken))
            with pytest.raises(jobs.DeviceFailure) as failure:
                await asyncio.wait_for(running, 60)
            assert "illegal memory access" in str(failure.value) or "unspecified launch failure" in str(failure.value)
            assert len(broken.calls) == 1  # it took no second task

            task = await _row(
                db, "SELECT status, worker, error_code FROM picserve_tasks WHERE task_uid = %(u)s", {"u": uid}
            )
            assert task == {"status": "Queuing", "worker": None, "error_code": 0}
            account = await db.repo.get_account(key)
            assert account is not None and account.used_credits == 0
            assert _failures() == before + 1

            # the row stays, unhealthy with the reason and holding nothing, listed though silent
            async with db.pool.connection() as conn:
                listed = {w.name: w for w in await workers.list_workers(conn, settings.stalled_after)}
            row = listed["broken"]
            assert row.unhealthy is not None and ("CUDA error" in row.unhealthy), row.unhealthy
            assert row.main_models == () and row.current_task is None and row.dtype == "float32"

            # a healthy worker then runs the task
            healthy = FakeEngine(step_seconds=0.0)
            await asyncio.wait_for(process.run_worker(settings, url, name="healthy", engine=healthy, burst=True), 60)
            task = await _row(db, "SELECT status, worker FROM picserve_tasks WHERE task_uid = %(u)s", {"u": uid})
            assert task == {"status": "Finished", "worker": "healthy"}
            account = await db.repo.get_account(key)
            assert account is not None and account.used_credits == 7

            # restarted under its name, the worker is healthy again
            restarted = asyncio.create_task(process.run_worker(settings, url, name="broken", engine=FakeEngine()))
            try:
                for _ in range(200):
                    async with db.pool.connection() as conn:
                        rows = {w.name: w for w in await workers.list_workers(conn, settings.stalled_after)}
                    if rows["broken"].unhealthy is None:
                        break
                    await asyncio.sleep(0.05)
                assert rows["broken"].unhealthy is None and rows["broken"].live
            finally:
                restarted.cancel()
                await asyncio.gather(restarted, return_exceptions=True)

    asyncio.run(main())


def test_the_worker_command_exits_75_and_workers_shows_why(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    url = settings.database_url or ""

    async def submit() -> None:
        async with database.open_database(url, cipher=KeyCipher.generate()) as db:
            await _task(db)

    asyncio.run(submit())
    monkeypatch.setattr(process, "build_engine", lambda _settings: BrokenEngine(ERRORS["RuntimeError"]))
    runner = CliRunner()
    env = {"PICSERVE_STALLED_AFTER": str(settings.stalled_after), "PICSERVE_DEVICE": "cpu"}
    result = runner.invoke(
        cli.app,
        ["worker", "--burst", "--name", "gpu-0", "--database-url", url, "--data-dir", str(settings.data_dir)],
        env=env,
    )
    assert result.exit_code == jobs.DeviceFailure.exit_code == 75, result.output

    listed = runner.invoke(cli.app, ["workers", "--json", "--database-url", url], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert [row["Name"] for row in rows] == ["gpu-0"]
    assert "illegal memory access" in rows[0]["Unhealthy"] and rows[0]["Dtype"] == "float32"
    assert rows[0]["ModelBytes"] == 0 and rows[0]["HostBytes"] == 0
    table = runner.invoke(cli.app, ["workers", "--database-url", url], env=env)
    assert table.exit_code == 0, table.output
    assert "DTYPE" in table.output and "UNHEALTHY" in table.output and "illegal memory access" in table.output

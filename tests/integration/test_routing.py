"""A fleet on one PostgreSQL: model-affinity routing, its wait, fair share and priority between keys,
and the worker registry (worker/routing.py, worker/registry.py).

Several real workers (`process.run_worker`) run in this process on one event loop, each with its own
`LoadingEngine`: a FakeEngine that holds one main model and takes `load_seconds` to load another.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from procrastinate.jobs import Status
from typer.testing import CliRunner

from picserve import cli, domain
from picserve.config import Settings
from picserve.engine.base import Generated, PreviewCallback, StepCallback
from picserve.engine.fake import FakeEngine
from picserve.keycipher import KeyCipher
from picserve.resilience import Retry
from picserve.tasks import database, recovery, workers
from picserve.worker import connector, jobs, process, routing

pytestmark = pytest.mark.postgres

ACTION = "GenerateImagesSDXL"


class LoadingEngine(FakeEngine):
    """A FakeEngine that holds one main model (an LRU of 1): a task of another model first loads it,
    which takes `load_seconds`. `held`: the model it starts with."""

    def __init__(self, load_seconds: float = 0.2, step_seconds: float = 0.005, held: str | None = None) -> None:
        super().__init__(step_seconds=step_seconds)
        self.load_seconds = load_seconds
        self.held = [held] if held else []
        self.loads = 0

    def holdings(self) -> dict[str, list[str]]:
        return {"main": list(self.held), "lora": []}

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        if spec.model_code not in self.held:
            self.loads += 1
            time.sleep(self.load_seconds)
            self.held = [spec.model_code]
        return super().generate(spec, on_step, on_preview)


def spec(model: str, label: str = "", steps: int = 2) -> domain.GenerationSpec:
    return domain.GenerationSpec(model_code=model, prompt=label or "a cat", width=8, height=8, steps=steps)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


class Fleet:
    """Workers on one database, started and stopped (cleanly) by the test; tasks submitted to it."""

    def __init__(self, db: database.Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.engines: dict[str, LoadingEngine] = {}

    async def start(self, name: str, engine: LoadingEngine, **changes: Any) -> None:
        settings = self.settings.evolve(**changes)
        self.engines[name] = engine
        self.workers[name] = asyncio.create_task(
            process.run_worker(settings, settings.database_url or "", name=name, engine=engine)
        )
        await self.until(lambda: self.registered(name), f"{name} registered")
        # and listening: a job queued before its LISTEN would reach it only at its next poll
        await self.until(lambda: self.listening(len(self.workers)), f"{name} listening")

    async def registered(self, name: str) -> bool:
        return name in {w.name for w in await self.listing()}

    async def listening(self, count: int) -> bool:
        rows = await self.rows(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'",
            {},
        )
        return int(rows[0]["n"]) >= count

    async def stop(self, name: str) -> None:
        task = self.workers.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        for name in list(self.workers):
            await self.stop(name)

    async def key(self, name: str, priority: int = 0, weight: float = 1.0) -> str:
        account = await self.db.repo.create_key(name, 10**9)
        if (priority, weight) != (0, 1.0):
            assert await self.db.repo.set_scheduling(account.public_key, priority, weight)
        return account.public_key

    async def submit(self, key: str, task_spec: domain.GenerationSpec) -> str:
        return await self.db.repo.create_task(secrets.token_hex(8), key, ACTION, task_spec, 0)

    async def tasks(self, uids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        rows = await self.rows(
            "SELECT task_uid, public_key, status, worker, attempt, model_code, created_at, started_at, finished_at, "
            "extract(epoch FROM started_at - created_at)::float AS waited FROM picserve_tasks "
            "WHERE %(all)s OR task_uid = ANY(%(uids)s)",
            {"all": uids is None, "uids": uids or []},
        )
        return {row["task_uid"]: row for row in rows}

    async def listing(self, everyone: bool = False) -> list[workers.WorkerInfo]:
        async with self.db.pool.connection() as conn:
            return await workers.list_workers(conn, self.settings.stalled_after, everyone)

    async def rows(self, query: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        async with self.db.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            return list(await cur.fetchall())

    async def until(self, predicate: Callable[[], Awaitable[Any]], what: str, within: float = 60.0) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"not in {within} s: {what}")

    async def all_ended(self, uids: list[str]) -> bool:
        return all(t["status"] == "Finished" for t in (await self.tasks(uids)).values())

    async def status_of(self, uid: str) -> str:
        return str((await self.tasks([uid]))[uid]["status"])


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        database_url=database_url,
        heartbeat_interval=0.2,
        stalled_after=2.0,
        progress_interval=10.0,
        shutdown_grace=2.0,
        device="cpu",
        affinity_wait=2.0,
    )


@pytest.fixture
def fleet(settings: Settings) -> Callable[[Callable[[Fleet], Awaitable[None]]], None]:
    """`fleet(body)`: awaits `body(fleet)` in a new event loop; every worker is stopped afterwards."""

    def go(body: Callable[[Fleet], Awaitable[None]]) -> None:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Fleet]:
            url = settings.database_url or ""
            async with database.open_database(url, cipher=KeyCipher.generate()) as db:
                crew = Fleet(db, settings)
                try:
                    yield crew
                finally:
                    await crew.stop_all()

        async def main() -> None:
            async with opened() as crew:
                await body(crew)

        asyncio.run(main())

    return go


# --- (a) affinity saves model loads ------------------------------------------------------------------


def test_affinity_makes_far_fewer_model_loads(fleet: Callable[..., None], report: Callable[[str], None]) -> None:
    # 24 tasks over 2 models in pairs (X X Y Y …), 2 workers: queue order alone makes each worker
    # load a model for nearly every task; affinity sends each model to the worker that holds it.
    loads: dict[str, int] = {}

    async def batch(crew: Fleet, affinity_wait: float, label: str) -> None:
        names = [f"{label}-w{i}" for i in range(2)]
        for name in names:
            await crew.start(name, LoadingEngine(load_seconds=0.2), affinity_wait=affinity_wait)
        key = await crew.key(label)
        models = ["model-x", "model-x", "model-y", "model-y"] * 6
        uids = [await crew.submit(key, spec(model, f"{label} task {i}")) for i, model in enumerate(models)]
        await crew.until(lambda: crew.all_ended(uids), f"{label}: 24 tasks finished", within=120)
        tasks = await crew.tasks(uids)
        # every task finished exactly once: one run each, one generation each
        assert {t["status"] for t in tasks.values()} == {"Finished"}
        assert [t["attempt"] for t in tasks.values()] == [1] * 24
        prompts = sorted(s.prompt for name in names for s in crew.engines[name].calls)
        assert prompts == sorted(f"{label} task {i}" for i in range(24))

        # the registry counted the same loads as the engines (a worker writes its row once the task's
        # outcome is in: the last task's row may land a moment after the task ended)
        async def counted() -> dict[str, workers.WorkerInfo] | None:
            listed = {w.name: w for w in await crew.listing()}
            return listed if sum(listed[n].tasks_done for n in names) == 24 else None

        listed = await crew.until(counted, f"{label}: the registry counted 24 tasks", within=10)
        assert {n: listed[n].model_loads for n in names} == {n: crew.engines[n].loads for n in names}
        loads[label] = sum(crew.engines[n].loads for n in names)
        for name in names:
            await crew.stop(name)

    async def body(crew: Fleet) -> None:
        await batch(crew, affinity_wait=3.0, label="affinity")
        await batch(crew, affinity_wait=0.0, label="fifo")

    fleet(body)
    report(
        f"model loads for 24 tasks over 2 models on 2 workers: "
        f"with affinity {loads['affinity']}, without {loads['fifo']}"
    )
    assert loads["affinity"] <= 4
    assert loads["fifo"] >= 8
    assert loads["affinity"] * 3 <= loads["fifo"]


# --- (b) and (c) the wait: only for a model a live worker holds ----------------------------------------


def test_a_task_whose_model_no_live_worker_holds_is_taken_at_once(
    fleet: Callable[..., None], report: Callable[[str], None]
) -> None:
    async def body(crew: Fleet) -> None:
        await crew.start("holds-x", LoadingEngine(held="model-x", step_seconds=0.1), affinity_wait=30.0)
        await crew.start("holds-y", LoadingEngine(held="model-y"), affinity_wait=30.0)
        key = await crew.key("k")
        long_x = await crew.submit(key, spec("model-x", steps=40))  # 4 s on holds-x
        await crew.until(lambda: _running(crew, long_x), "the long task running")
        assert (await crew.tasks([long_x]))[long_x]["worker"] == "holds-x"
        held_back = await crew.submit(key, spec("model-x"))  # for holds-x, busy: waits (30 s)
        unheld = await crew.submit(key, spec("model-z"))  # nobody holds model-z: not held back
        await crew.until(lambda: _started(crew, unheld), "the model-z task started", within=10)
        tasks = await crew.tasks([long_x, held_back, unheld])
        report(f"model-z task: taken by {tasks[unheld]['worker']} after {tasks[unheld]['waited']:.2f} s")
        assert tasks[unheld]["worker"] == "holds-y"
        assert tasks[unheld]["waited"] < 2.0
        assert tasks[held_back]["status"] == "Queuing"  # skipped over: it waits for holds-x
        assert tasks[long_x]["status"] == "Running"

    fleet(body)


def test_a_task_for_a_busy_holders_model_goes_to_another_worker_after_the_wait(
    fleet: Callable[..., None], report: Callable[[str], None]
) -> None:
    wait = 1.5

    async def body(crew: Fleet) -> None:
        await crew.start("holds-x", LoadingEngine(held="model-x", step_seconds=0.1), affinity_wait=wait)
        key = await crew.key("k")
        # 10 s on holds-x: still running when the spare takes the second task, even on a loaded machine
        long_x = await crew.submit(key, spec("model-x", steps=100))
        await crew.until(lambda: _running(crew, long_x), "the long task running")
        await crew.start("spare", LoadingEngine(held="model-y"), affinity_wait=wait)
        task = await crew.submit(key, spec("model-x"))
        await crew.until(lambda: _started(crew, task), "the second model-x task started", within=15)
        tasks = await crew.tasks([long_x, task])
        report(
            f"\nmodel-x task with its holder busy: taken by {tasks[task]['worker']} after {tasks[task]['waited']:.2f} s"
        )
        assert tasks[task]["worker"] == "spare"
        assert wait - 0.05 <= tasks[task]["waited"] < wait + 2.5  # after the wait, not before
        assert tasks[long_x]["status"] == "Running"  # its holder never freed up
        assert crew.engines["spare"].loads == 1  # and the spare worker loaded the model for it

    fleet(body)


async def _started(crew: Fleet, uid: str) -> bool:
    return await crew.status_of(uid) in ("Running", "Finished")


async def _running(crew: Fleet, uid: str) -> bool:
    return await crew.status_of(uid) == "Running"


# --- (d) fairness between keys ---------------------------------------------------------------------


def test_a_key_flooding_the_queue_does_not_starve_another(
    fleet: Callable[..., None], report: Callable[[str], None]
) -> None:
    async def body(crew: Fleet) -> None:
        await crew.start("solo", LoadingEngine(held="model-x", step_seconds=0.02), affinity_wait=1.0)
        flood, polite, other_model = await crew.key("flood"), await crew.key("polite"), await crew.key("other")
        flooded = [await crew.submit(flood, spec("model-x", f"flood {i}", steps=10)) for i in range(100)]
        await crew.until(lambda: _count(crew, flooded, "Finished", 3), "a few of the flood's tasks done", within=60)
        # queued while the worker generates (0.2 s a task), not while it fetches: no fetch under way
        # can have missed it, so it must be the very next task started
        await crew.until(lambda: _just_started(crew, flooded), "a flood task just started", within=30)
        late = await crew.submit(polite, spec("model-x", "polite"))
        await crew.until(lambda: _started(crew, late), "the polite key's task started", within=30)
        position = await _position(crew, late)
        report(f"polite key's task: start position {position} after 100 queued tasks of another key")
        assert position == 1

        # a key whose model the worker does not hold waits for affinity at most affinity_wait
        elsewhere = await crew.submit(other_model, spec("model-y", "other"))
        await crew.until(lambda: _started(crew, elsewhere), "the other model's task started", within=30)
        waited = (await crew.tasks([elsewhere]))[elsewhere]["waited"]
        report(f"task of another model: started after {waited:.2f} s (affinity_wait 1 s)")
        assert 1.0 - 0.05 <= waited < 1.0 + 2.0  # held back for the loaded model, then served anyway
        assert await crew.status_of(flooded[-1]) == "Queuing"  # all of it ran ahead of the flood

    fleet(body)


async def _just_started(crew: Fleet, uids: list[str]) -> bool:
    """One of `uids` started running less than 50 ms ago (by the database's clock)."""
    rows = await crew.rows(
        "SELECT 1 FROM picserve_tasks WHERE task_uid = ANY(%(uids)s) AND status = 'Running' "
        "AND started_at > now() - interval '50 milliseconds'",
        {"uids": uids},
    )
    return bool(rows)


async def _count(crew: Fleet, uids: list[str], status: str, at_least: int) -> bool:
    return sum(t["status"] == status for t in (await crew.tasks(uids)).values()) >= at_least


async def _position(crew: Fleet, uid: str) -> int:
    """1 + the tasks started after `uid` was queued and before it started."""
    tasks = await crew.tasks()
    mine = tasks[uid]
    return 1 + sum(
        1
        for t in tasks.values()
        if t["started_at"] is not None and mine["created_at"] < t["started_at"] < mine["started_at"]
    )


# Priority and weight, at the fetch itself: jobs are fetched (and left running) one after another by
# several procrastinate workers through picserve's fetch, so each pick sees the running counts.


def _fetching(crew: Fleet, letters: dict[str, str], affinity_wait: float = 2.0) -> Callable[..., Awaitable[str]]:
    route = routing.Routing(worker="probe", affinity_wait=affinity_wait, live_after=crew.settings.stalled_after)
    app = database.make_app("", connector.ResilientConnector(Retry(), route))
    opened: list[int] = []

    async def fetch(count: int, finish: bool = False) -> str:
        """The letter of the key of each of `count` jobs fetched, one after another; left running, or
        with `finish` ended before the next fetch (one worker)."""
        if not opened:
            await app.open_async(crew.db.pool)
            opened.append(1)
        keys = {t["task_uid"]: t["public_key"] for t in (await crew.tasks()).values()}
        picked = ""
        for _ in range(count):
            worker_id = await app.job_manager.register_worker()
            job = await app.job_manager.fetch_job(queues=[jobs.QUEUE], worker_id=worker_id)
            if job is None:
                picked += "-"
                continue
            picked += letters[keys[job.task_kwargs["task_uid"]]]
            if finish:
                await app.job_manager.finish_job(job, status=Status.SUCCEEDED, delete_job=False)
        return picked

    return fetch


def test_a_higher_priority_is_served_first_strictly(fleet: Callable[..., None]) -> None:
    async def body(crew: Fleet) -> None:
        low = await crew.key("low")
        high = await crew.key("high", priority=1)
        for _ in range(10):
            await crew.submit(low, spec("model-x"))
        for _ in range(3):
            await crew.submit(high, spec("model-x"))
        fetch = _fetching(crew, {low: "L", high: "H"})
        # strict: the high key goes first even with more tasks running than the low one
        assert await fetch(6) == "HHHLLL"

    fleet(body)


def test_keys_of_equal_priority_share_the_workers_by_weight(
    fleet: Callable[..., None], report: Callable[[str], None]
) -> None:
    async def body(crew: Fleet) -> None:
        light = await crew.key("light")
        heavy = await crew.key("heavy", weight=3.0)
        for _ in range(20):
            await crew.submit(light, spec("model-x"))
        for _ in range(20):
            await crew.submit(heavy, spec("model-x"))
        fetch = _fetching(crew, {light: "a", heavy: "B"})
        # fewest running ÷ weight first, the least recently served on a tie: 1 light for 3 heavy
        picked = await fetch(8)
        report(f"weights 1 and 3, 8 jobs started: {picked}")
        assert picked == "aBBBaBBB"

    fleet(body)


def test_one_worker_serves_keys_round_robin(fleet: Callable[..., None]) -> None:
    # One worker: no task runs at any of its fetches, so every key is equally served; the least
    # recently served key goes first.
    async def body(crew: Fleet) -> None:
        first, second = await crew.key("first"), await crew.key("second")
        for _ in range(10):
            await crew.submit(first, spec("model-x"))
        for _ in range(3):
            await crew.submit(second, spec("model-x"))
        fetch = _fetching(crew, {first: "1", second: "2"}, affinity_wait=0.0)
        assert await fetch(8, finish=True) == "12121211"

    fleet(body)


# --- (e) the registry ------------------------------------------------------------------------------


def test_the_registry_lists_live_workers_and_forgets_dead_ones(fleet: Callable[..., None], settings: Settings) -> None:
    runner = CliRunner()
    url = settings.database_url or ""
    env = {"PICSERVE_STALLED_AFTER": str(settings.stalled_after)}  # the fleet's, as an operator's shell has

    def listed(*flags: str) -> list[dict[str, Any]]:
        result = runner.invoke(cli.app, ["workers", "--json", *flags, "--database-url", url], env=env)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]

    async def body(crew: Fleet) -> None:
        await crew.start("alpha", LoadingEngine(held="model-x"))
        await crew.start("beta", LoadingEngine())
        key = await crew.key("k")
        uid = await crew.submit(key, spec("model-y"))
        await crew.until(lambda: crew.all_ended([uid]), "the task finished")
        await crew.until(lambda: _tasks_done(crew, 1), "the registry counted it")

        rows = await asyncio.to_thread(listed)
        by_name = {row["Name"]: row for row in rows}
        assert sorted(by_name) == ["alpha", "beta"]
        for row in rows:
            assert {"Name", "Device", "Models", "ModelLoads", "TasksDone", "CurrentTask", "LastHeartbeat"} <= set(row)
            assert {"Host", "GPU", "Loras", "Live"} <= set(row)
            assert row["Device"] == "cpu" and row["GPU"] is None and row["Live"] is True
            assert row["CurrentTask"] is None
            assert time.time() - _epoch(row["LastHeartbeat"]) < 5
        ran = (await crew.tasks([uid]))[uid]["worker"]
        assert by_name[ran]["Models"] == ["model-y"] and by_name[ran]["ModelLoads"] == 1
        assert by_name[ran]["TasksDone"] == 1
        idle = "beta" if ran == "alpha" else "alpha"
        assert by_name[idle]["TasksDone"] == 0
        table = await asyncio.to_thread(runner.invoke, cli.app, ["workers", "--database-url", url], env=env)
        assert table.exit_code == 0 and "alpha" in table.output and "LAST HEARTBEAT" in table.output

        # a cleanly stopped worker removes itself
        await crew.stop("beta")
        assert [row["Name"] for row in await asyncio.to_thread(listed)] == ["alpha"]

        # a worker that stopped beating (killed: it never removes itself) is not live…
        async with crew.db.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO picserve_workers (name, host, pid, device, main_models, last_heartbeat) "
                "VALUES ('ghost', 'elsewhere', 1, 'cuda:0', '{model-z}', now() - make_interval(secs => %s))",
                (settings.stalled_after + 1,),
            )
        assert [row["Name"] for row in await asyncio.to_thread(listed)] == ["alpha"]
        ghost = {row["Name"]: row for row in await asyncio.to_thread(listed, "--all")}["ghost"]
        assert ghost["Live"] is False
        # …so its model is not kept for it: a model-z task is taken at once
        uid = await crew.submit(key, spec("model-z"))
        await crew.until(lambda: _started(crew, uid), "the model-z task started", within=10)
        assert (await crew.tasks([uid]))[uid]["waited"] < settings.affinity_wait
        # …and the sweep deletes it once silent for AGE_OUT × stalled_after
        await recovery.sweep(crew.db, settings.stalled_after)
        assert "ghost" in {w.name for w in await crew.listing(everyone=True)}
        async with crew.db.pool.connection() as conn:
            await conn.execute(
                "UPDATE picserve_workers SET last_heartbeat = now() - make_interval(secs => %s) WHERE name = 'ghost'",
                (workers.AGE_OUT * settings.stalled_after + 1,),
            )
        await recovery.sweep(crew.db, settings.stalled_after)
        assert {w.name for w in await crew.listing(everyone=True)} == {"alpha"}

    fleet(body)


async def _tasks_done(crew: Fleet, count: int) -> bool:
    return sum(w.tasks_done for w in await crew.listing()) >= count


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_keys_update_sets_priority_weight_and_admin(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--database-url", settings.database_url or "", "--data-dir", str(tmp_path / "data")]
    created = runner.invoke(cli.app, ["keys", "create", "--name", "vip", "--admin", *common])
    assert created.exit_code == 0, created.output
    public_key = json.loads(created.output.splitlines()[-1])["PublicKey"]

    def listed() -> dict[str, Any]:
        shown = runner.invoke(cli.app, ["keys", "list", *common])
        (row,) = [json.loads(line) for line in shown.output.splitlines() if line.startswith("{")]
        return cast(dict[str, Any], row)

    assert listed()["Admin"] is True
    updated = runner.invoke(
        cli.app, ["keys", "update", public_key, "--priority", "2", "--weight", "3.5", "--no-admin", *common]
    )
    assert updated.exit_code == 0, updated.output
    row = listed()
    assert (row["Priority"], row["Weight"], row["Admin"]) == (2, 3.5, False)
    refused = runner.invoke(cli.app, ["keys", "update", public_key, "--weight", "0", *common])
    assert refused.exit_code != 0 and "--weight" in refused.output


# --- what the sweep tidies ---------------------------------------------------------------------------


def test_the_sweep_cancels_a_queued_job_whose_task_is_gone(fleet: Callable[..., None], settings: Settings) -> None:
    async def body(crew: Fleet) -> None:
        key = await crew.key("k")
        uid = await crew.submit(key, spec("model-x"))
        async with crew.db.pool.connection() as conn:  # a cancel that reached the task but not its job
            await conn.execute(
                "UPDATE picserve_tasks SET status = 'Canceled', finished_at = now() - make_interval(secs => %s) "
                "WHERE task_uid = %s",
                (settings.stalled_after + 1, uid),
            )
        await recovery.sweep(crew.db, settings.stalled_after)
        async with crew.db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT j.status FROM procrastinate_jobs j JOIN picserve_tasks t ON t.job_id = j.id "
                "WHERE t.task_uid = %s",
                (uid,),
            )
            assert await cur.fetchone() == ("cancelled",)

    fleet(body)


def test_create_task_records_what_the_fetch_routes_by(fleet: Callable[..., None]) -> None:
    async def body(crew: Fleet) -> None:
        key = await crew.key("k")
        loras = (domain.SubModel("lora", "b-style"), domain.SubModel("embedding", "e"), domain.SubModel("lora", "a.x"))
        uid = await crew.submit(key, spec("model-x").evolve(sub_models=loras))
        # control models are held beside LoRAs, and routed to the same way: `controlnet.<key>` names no LoRA
        units = (domain.ControlUnit(model_code="xl-canny"), domain.ControlUnit(model_code="ip-adapter_sdxl"))
        guided = await crew.submit(key, spec("model-x").evolve(sub_models=loras[:1], control_units=units))
        async with crew.db.pool.connection() as conn:
            cur = await conn.execute("SELECT model_code, loras FROM picserve_tasks WHERE task_uid = %s", (uid,))
            assert await cur.fetchone() == ("model-x", ["a_x", "b_style"])
            cur = await conn.execute("SELECT loras FROM picserve_tasks WHERE task_uid = %s", (guided,))
            assert await cur.fetchone() == (["b_style", "controlnet.ip_adapter_sdxl", "controlnet.xl_canny"],)

    fleet(body)


def test_poll_interval_follows_the_wait() -> None:
    assert routing.poll_interval(0) == 5.0
    assert routing.poll_interval(5.0) == 1.0
    assert routing.poll_interval(0.5) == 0.2
    assert routing.poll_interval(600) == 5.0


def test_a_fake_engine_worker_reads_no_gpu() -> None:
    # in a fresh interpreter: this one may have imported torch for another test
    code = (
        "import sys; from picserve.worker import process, registry; "
        "assert registry.describe_device('cuda:0') == ('cuda:0', None, None); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

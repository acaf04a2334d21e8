"""PostgreSQL stopped under load, then started again, under a running `picserve serve`.

Real processes on a real server: Debian's PostgreSQL (tests/pg_server.py) on 127.0.0.1, `picserve serve`
(the API and one worker process, the tiny SDXL on the CPU) on it through PICSERVE_DATABASE_URL, and a
client sending a stream of signed requests through the SDK. While the database is away every reply
is RetCode 290 within seconds (no 500, no HTTP error, no hang); the processes stay up, the worker
keeps its place (its task is not run again) and, once the database is back, everything resumes
without a restart: every accepted TaskUID ends Finished, exactly once, charged once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import psutil
import psycopg
import pytest
from fastapi.testclient import TestClient

from picserve import errors
from picserve.api.app import create_app, services_of
from picserve.config import Settings
from picserve.engine.fake import FakeEngine
from picserve.sdk import Client
from picserve.worker import process
from tests import needs, processes
from tests.pg_server import DebianPostgres, skip_reason
from tests.processes import create_key, wait_for

#: how long PostgreSQL stays down
OUTAGE = 8.0
#: longer than the outage: the stalled-worker sweep must not take the tasks of workers that waited
STALLED_AFTER = 5.0
#: clients that only read, beside the one that submits
READERS = 3
#: the longest any reply may take, the outage included (PICSERVE_DB_WAIT_TIMEOUT is 3 s)
MAX_REPLY = 5.0
TASK = {
    "MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 8}},
    "PositivePrompts": ["a lighthouse at dusk"],
    "Width": 64,
    "Height": 64,
}


@dataclass
class Reply:
    action: str
    started: float  #: time.monotonic() when sent
    seconds: float
    ret_code: int  #: 0 for success; -1 for a transport failure (an HTTP error, a timeout)
    detail: str = ""


class Load(threading.Thread):
    """A client sending requests back to back. The submitter (`source` None) sends a new generation
    whenever fewer than `OPEN` of its tasks are open (or its last try was refused), so the worker is
    always busy and its queue stays short; every load reads the submitter's tasks, its balance and
    its running tasks."""

    OPEN = 2

    def __init__(self, base: str, public_key: str, private_key: str, halt: threading.Event, source=None) -> None:
        super().__init__(daemon=True)
        self.client = Client(base, public_key, private_key, timeout=30)
        self.replies: list[Reply] = []
        self.accepted: list[str] = []
        self.halt = halt
        self.source: Load = source or self
        self._ended: set[str] = set()

    def call(self, action: str, send) -> object:
        started = time.monotonic()
        try:
            value = send()
        except errors.PicserveError as exc:
            code = -1 if isinstance(exc, errors.SDKError) else exc.ret_code
            self.replies.append(Reply(action, started, time.monotonic() - started, code, exc.message))
            return None
        self.replies.append(Reply(action, started, time.monotonic() - started, 0))
        return value

    def run(self) -> None:
        refused = False
        with self.client:
            while not self.halt.is_set():
                open_uids = [uid for uid in self.source.accepted if uid not in self._ended]
                if self.source is self and (refused or len(open_uids) < self.OPEN):
                    seed = len(self.replies)
                    uid = self.call(
                        "GenerateImagesSDXL", lambda s=seed: self.client.generate_images_sdxl(**TASK, Seed=s)
                    )
                    refused = uid is None
                    if uid is not None:
                        self.accepted.append(str(uid))
                if open_uids:
                    details = self.call("ListTasksDetails", lambda u=open_uids[:50]: self.client.list_tasks_details(u))
                    for detail in details or []:
                        if detail["Status"] in ("Finished", "Error", "Canceled"):
                            self._ended.add(detail["TaskUID"])
                self.call("GetCreditBalance", self.client.get_credit_balance)
                self.call("ListRunningTasks", self.client.list_running_tasks)
                self.halt.wait(0.2)


def picserve_workers(pid: int) -> list[int]:
    return sorted(
        child.pid
        for child in psutil.Process(pid).children(recursive=True)
        if "worker" in child.cmdline() and "picserve" in child.cmdline()
    )


def task_rows(url: str, public_key: str) -> dict[str, dict]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(
            "SELECT task_uid, status, cost, attempt, worker FROM picserve_tasks WHERE public_key = %s", (public_key,)
        ).fetchall()
    return {row["task_uid"]: row for row in rows}


def used_credits(url: str, public_key: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT used_credits FROM picserve_keys WHERE public_key = %s", (public_key,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def postgres():
    needs.need(skip_reason())  # skips without Debian's PostgreSQL; fails under CI
    with DebianPostgres() as server:
        yield server


@pytest.fixture
def url(postgres) -> str:
    """A database of its own on the `postgres` server."""
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE picserve")
    return postgres.url.rsplit("/", 1)[0] + "/picserve"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_api_answers_busy_and_everything_resumes_after_a_database_outage(
    mode, postgres, url, models_dir, tmp_path, report
):
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "PICSERVE_DATABASE_URL": url,
        "PICSERVE_DATA_DIR": str(data_dir),
        "PICSERVE_MODELS_DIR": str(models_dir),
        "PICSERVE_DEVICE": "cpu",
        "PICSERVE_HEARTBEAT_INTERVAL": "0.5",
        "PICSERVE_STALLED_AFTER": str(STALLED_AFTER),
        "PICSERVE_PROGRESS_INTERVAL": "0.2",
        "PICSERVE_MAX_REQUESTS_PER_MINUTE": "0",
        "PICSERVE_MAX_OPEN_TASKS": "0",
        "PICSERVE_LOG_LEVEL": "info",
    }
    key = create_key("--credits", 1_000_000, env=env)
    port = processes.free_port()
    base = f"http://127.0.0.1:{port}"
    serve = processes.spawn(
        processes.picserve_command("serve", "--port", port, "--workers", 1), tmp_path / "serve.log", env
    )
    halt = threading.Event()
    load = Load(base, key["PublicKey"], key["PrivateKey"], halt)
    loads = [load, *(Load(base, key["PublicKey"], key["PrivateKey"], halt, source=load) for _ in range(READERS))]
    try:
        processes.wait_healthy(serve, base, timeout=120)
        workers = wait_for(lambda: picserve_workers(serve.pid), 60, "the worker process")
        with Client(base, key["PublicKey"], key["PrivateKey"]) as warm:  # the worker loads the model
            warm_uid = warm.generate_images_sdxl(**TASK)
            assert warm.wait(warm_uid, timeout=180)["Status"] == "Finished"

        for each in loads:
            each.start()
        # Under load: a task running when the database goes.
        wait_for(
            lambda: sum(r["status"] == "Finished" for r in task_rows(url, key["PublicKey"]).values()) >= 3,
            120,
            "the warm-up and two tasks under load finished",
        )
        wait_for(
            lambda: any(r["status"] == "Running" for r in task_rows(url, key["PublicKey"]).values()),
            30,
            "a task running",
        )
        running_at_stop = [uid for uid, r in task_rows(url, key["PublicKey"]).items() if r["status"] == "Running"]
        stopping = time.monotonic()
        postgres.stop(mode)
        down = time.monotonic()
        time.sleep(OUTAGE)
        restarting = time.monotonic()
        postgres.start()
        up = time.monotonic()
        time.sleep(8.0)  # the load goes on with the database back
        halt.set()
        for each in loads:
            each.join(60)
            assert not each.is_alive()

        # Every accepted task ends Finished, without restarting anything.
        def all_ended():
            rows = task_rows(url, key["PublicKey"])
            return all(rows.get(uid, {}).get("status") in ("Finished", "Error", "Canceled") for uid in load.accepted)

        wait_for(all_ended, 180, "every accepted task ended", every=0.5)
        assert serve.returncode is None, serve.describe()
        assert picserve_workers(serve.pid) == workers, "the worker process was restarted"
    finally:
        halt.set()
        serve.stop()
    log_text = serve.output()

    rows = task_rows(url, key["PublicKey"])
    replies = [reply for each in loads for reply in each.replies]
    during = [r for r in replies if r.started >= down and r.started + r.seconds <= restarting]
    straddling = [r for r in replies if r.started < up and r.started + r.seconds > stopping and r not in during]
    started_down = [r for r in replies if down <= r.started < restarting]
    after = [r for r in replies if r.started >= up]
    recovered = next((r.started + r.seconds - up for r in after if r.ret_code == 0), None)
    unexpected = [r for r in replies if r.ret_code not in (0, 290)]
    figures = {
        "mode": mode,
        "requests": len(replies),
        "during outage": len(during),
        "during outage, 290": sum(r.ret_code == 290 for r in during),
        "started during outage, by RetCode": dict(Counter(r.ret_code for r in started_down)),
        "max latency during outage (s)": round(max((r.seconds for r in during), default=0.0), 2),
        "max latency overall (s)": round(max(r.seconds for r in replies), 2),
        "straddling stop/start": len(straddling),
        "first success after restart (s)": None if recovered is None else round(recovered, 2),
        "tasks accepted": len(load.accepted),
        "tasks finished": sum(rows[uid]["status"] == "Finished" for uid in load.accepted if uid in rows),
        "running at stop": len(running_at_stop),
        "tasks not accepted but stored": len(set(rows) - {*load.accepted, warm_uid}),
    }
    report(f"database outage figures: {json.dumps(figures)}")

    assert not unexpected, f"replies other than 0 and 290: {unexpected[:5]}\n{log_text[-3000:]}"
    assert during and all(r.ret_code == 290 for r in during), [r for r in during if r.ret_code != 290][:5]
    slow = [r for r in replies if r.seconds > MAX_REPLY]
    assert not slow, f"replies slower than {MAX_REPLY} s: {slow[:5]}"
    assert recovered is not None and recovered < 5.0, f"no success within 5 s of the restart: {recovered}"
    assert all(r.ret_code == 0 for r in after if r.started > up + 5.0), "requests still failing 5 s after the restart"
    # Nothing lost, nothing run twice, charged once.
    assert {uid: rows[uid]["status"] for uid in load.accepted} == dict.fromkeys(load.accepted, "Finished")
    assert all(row["status"] == "Finished" for row in rows.values()), "a task not accepted was left unfinished"
    assert used_credits(url, key["PublicKey"]) == sum(row["cost"] for row in rows.values())
    rerun = {uid: row["attempt"] for uid, row in rows.items() if row["attempt"] != 1}
    assert not rerun, f"tasks run more than once (the worker lost its place): {rerun}"
    # The worker waited for the database: procrastinate's loop never ended (process.work's fallback).
    assert "procrastinate's loop ended" not in log_text and "Side task" not in log_text, log_text[-3000:]


def test_a_worker_loop_that_ends_is_started_again_in_the_process(url, models_dir, tmp_path, caplog):
    # A worker whose procrastinate row was deleted (pruned by another worker starting while this one's
    # heartbeat was old) fails its next fetch on the foreign key: its loop ends, and `work` starts a new
    # one, registered anew, in the same process.
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        database_url=url,
        heartbeat_interval=0.5,
        stalled_after=STALLED_AFTER,
        device="cpu",
        max_requests_per_minute=0,
    )
    with TestClient(create_app(settings)) as api:
        account = api.portal.call(services_of(api.app).repo.create_key, "loop", 100_000)
        client = Client("http://testserver", account.public_key, account.private_key, http=api)
        tasks: list[asyncio.Task] = []

        async def run() -> None:
            tasks.append(asyncio.current_task())
            await process.run_worker(settings, url, "in-process", engine=FakeEngine(step_seconds=0.01))

        running = api.portal.start_task_soon(run)
        wait_for(lambda: tasks, 10, "the worker task")
        try:
            first = client.generate_images_sdxl(**TASK)
            wait_for(lambda: client.list_tasks_details([first])[0]["Status"] == "Finished", 60, "the first task")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM procrastinate_workers")
            with caplog.at_level(logging.WARNING, logger="picserve.worker.process"):
                second = client.generate_images_sdxl(**TASK)
                wait_for(lambda: client.list_tasks_details([second])[0]["Status"] == "Finished", 60, "the second task")
        finally:  # as SIGTERM stops it: the worker's graceful stop
            api.portal.call(tasks[0].cancel)
            with contextlib.suppress(concurrent.futures.CancelledError):
                running.result(60)
    assert any("procrastinate's loop ended" in record.getMessage() for record in caplog.records)
    with psycopg.connect(url) as conn:
        attempts = conn.execute("SELECT attempt FROM picserve_tasks WHERE task_uid = %s", (second,)).fetchone()
    assert attempts == (1,)

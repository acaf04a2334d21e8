"""A fleet as an operator runs one: separate processes on one PostgreSQL and one S3 store.

Debian's PostgreSQL (tests/pg_server.py, `initdb` + `pg_ctl` on 127.0.0.1), moto's S3 server on
127.0.0.1, two API processes (`picserve serve --workers 0`) and three worker processes
(`picserve worker`, the tiny SDXL on the CPU, one main model in memory each, as on a GPU that fits
one SDXL). Two keys send 36 tasks over two main models through both APIs: key A's backlog of 24
first, then key B's 12. Mid-run one worker is killed (SIGKILL, as a lost machine). Run twice, with
model affinity on (PICSERVE_AFFINITY_WAIT) and off, it shows: every task finishes exactly once
(one successful job and one written outcome each, charged once; only the killed worker's task ran a
second time), affinity makes far fewer model loads (both counts printed, from the worker registry),
key B's first task starts at one of the next free workers instead of behind key A's backlog, and
every image is downloaded from a presigned S3 URL.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from picserve.sdk import Client
from tests import needs, processes
from tests.pg_server import DebianPostgres, skip_reason
from tests.processes import Process, create_key, wait_for
from tests.s3_server import make_bucket

WORKERS = 3
A_TASKS, B_TASKS = 24, 12
MODELS = ("picserve-tiny", "picserve-tiny-diffusers")  # a single file and a diffusers folder
#: a worker silent this long has its task run again elsewhere. Five picserve processes share 2 cores here
#: with another test file (the longest files run first, side by side): a live worker starved of the CPU
#: for 3 s was once judged dead, and two tasks ran twice, which the test rightly counts as a failure
STALLED_AFTER = 8.0
#: how long a task waits for a worker holding its model (about twice a tiny model's load here)
AFFINITY_WAIT = 3.0
#: the worker is killed once this many of the phase's tasks finished
KILL_AFTER = 12
BUCKET = "fleet-results"


def request(model: str, seed: int) -> dict[str, Any]:
    return {
        "MainModel": {"ModelCode": model, "InferenceParams": {"Steps": 6}},
        "PositivePrompts": [f"a lighthouse, variation {seed}"],
        "Width": 64,
        "Height": 64,
        "Seed": seed,
    }


def rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


@dataclass
class Fleet:
    url: str
    env: dict[str, str]
    logs: Path
    stack: ExitStack
    apis: list[str] = field(default_factory=list)
    workers: dict[str, Process] = field(default_factory=dict)

    def api(self, index: int) -> str:
        process = processes.serve("--workers", "0", log=self.logs / f"api{index}.log", env=self.env)
        self.stack.callback(process.stop)
        self.apis.append(process.base)
        return process.base

    def start_workers(self, label: str, affinity_wait: float) -> list[str]:
        env = {**self.env, "PICSERVE_AFFINITY_WAIT": str(affinity_wait)}
        names = [f"{label}-w{n}" for n in range(WORKERS)]
        for name in names:
            self.workers[name] = processes.worker(
                "--name", name, "--device", "cpu", log=self.logs / f"{name}.log", env=env
            )
            self.stack.callback(self.workers[name].stop)
        wait_for(lambda: len(self.registry(label)) == WORKERS, 180, f"{WORKERS} {label} workers registered")
        return names

    def registry(self, label: str) -> dict[str, dict[str, Any]]:
        found = rows(self.url, "SELECT * FROM picserve_workers WHERE name LIKE %(p)s", {"p": f"{label}-w%"})
        return {row["name"]: row for row in found}

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in sorted(self.logs.glob("*.log"))
        )


@dataclass
class Phase:
    label: str
    loads: int
    b_position: int
    #: A's tasks not yet started when B's first was queued, and how long B's first waited (s)
    a_backlog: int
    b_wait: float
    killed: str
    killed_task: str
    attempts: dict[str, int]
    seconds: float


@pytest.fixture
def fleet(models_dir: Path, s3_endpoint: str, tmp_path: Path) -> Iterator[Fleet]:
    needs.need(skip_reason())  # skips without Debian's PostgreSQL; fails under CI
    make_bucket(s3_endpoint, BUCKET)
    with DebianPostgres() as postgres, ExitStack() as stack:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE picserve")
        url = postgres.url.rsplit("/", 1)[0] + "/picserve"
        env = {
            **os.environ,
            "PICSERVE_DATABASE_URL": url,
            "PICSERVE_DATA_DIR": str(tmp_path / "data"),
            "PICSERVE_MODELS_DIR": str(models_dir),
            "PICSERVE_STORAGE": f"s3://{BUCKET}/results",
            "PICSERVE_S3_ENDPOINT_URL": s3_endpoint,
            "PICSERVE_HEARTBEAT_INTERVAL": "0.5",
            "PICSERVE_STALLED_AFTER": str(STALLED_AFTER),
            "PICSERVE_PROGRESS_INTERVAL": "0.5",
            "PICSERVE_MAX_LOADED_MODELS": "1",
            "PICSERVE_MAX_OPEN_TASKS": "0",
            "PICSERVE_MAX_REQUESTS_PER_MINUTE": "0",
            "PICSERVE_LOG_LEVEL": "info",
            "OMP_NUM_THREADS": "1",  # five processes on a small machine: no thread oversubscription
        }
        logs = tmp_path / "logs"
        logs.mkdir()
        yield Fleet(url, env, logs, stack)


def make_key(fleet: Fleet, name: str) -> dict[str, str]:
    return create_key("--credits", 1_000_000, name=name, env=fleet.env)


@contextmanager
def clients(fleet: Fleet, key: dict[str, str]) -> Iterator[list[Client]]:
    """One SDK client of `key` per API process."""
    made = [Client(base, key["PublicKey"], key["PrivateKey"], timeout=30) for base in fleet.apis]
    try:
        yield made
    finally:
        for client in made:
            client.close()


def run_phase(fleet: Fleet, label: str, affinity_wait: float, a: list[Client], b: list[Client]) -> Phase:
    """36 tasks (A's 24, then B's 12; models in pairs) through both APIs on 3 fresh workers, one of
    them killed mid-run; checked to the end. Returns what the phase measured."""
    names = fleet.start_workers(label, affinity_wait)
    started = time.monotonic()
    plan = [(a, i) for i in range(A_TASKS)] + [(b, i) for i in range(B_TASKS)]
    uids = [
        # alternate the APIs; models in pairs (X X Y Y …) so queue order alone switches models often
        client[n % 2].generate_images_sdxl(**request(MODELS[(n // 2) % 2], n))
        for n, (client, _) in enumerate(plan)
    ]
    b_first = uids[A_TASKS]

    def tasks() -> dict[str, dict[str, Any]]:
        found = rows(fleet.url, "SELECT * FROM picserve_tasks WHERE task_uid = ANY(%(u)s)", {"u": uids})
        return {row["task_uid"]: row for row in found}

    def finished() -> int:
        return sum(row["status"] == "Finished" for row in tasks().values())

    # Kill a worker in the middle of a task, once a third of the tasks are done: one of key A's, so that
    # B's tasks keep the start time of their only run (a task run again starts again).
    wait_for(lambda: finished() >= KILL_AFTER, 300, f"{KILL_AFTER} tasks of {label} finished")
    a_tasks = set(uids[:A_TASKS])
    running = wait_for(
        lambda: [r for r in tasks().values() if r["status"] == "Running" and r["task_uid"] in a_tasks],
        60,
        "a task part-way through",
        every=0.05,
    )
    victim, killed_task = running[0]["worker"], running[0]["task_uid"]
    fleet.workers[victim].kill()
    registry = fleet.registry(label)
    killed_loads = registry[victim]["model_loads"] if victim in registry else 0

    def ended() -> bool:
        return all(row["status"] in ("Finished", "Error", "Canceled") for row in tasks().values())

    try:
        wait_for(ended, 400, f"all {len(uids)} tasks of {label} ended", every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.log_tail()}") from exc
    seconds = time.monotonic() - started
    registry = fleet.registry(label)
    live = [name for name in names if name != victim]
    assert set(live) <= set(registry), f"a live worker left the registry: {sorted(registry)}"
    loads = killed_loads + sum(registry[name]["model_loads"] for name in live)
    for name in live:
        code = fleet.workers[name].stop()
        assert code == 0, fleet.workers[name].describe()

    final = tasks()
    # All finished, exactly once: one successful job each, and only the killed task ran twice.
    assert {uid: row["status"] for uid, row in final.items()} == dict.fromkeys(uids, "Finished"), fleet.log_tail()
    attempts = {uid: row["attempt"] for uid, row in final.items()}
    assert {uid: n for uid, n in attempts.items() if n != 1}.keys() <= {killed_task}
    assert final[killed_task]["worker"] != victim, "the killed worker's task was not run again elsewhere"
    # procrastinate deletes succeeded jobs; the workers' logs say which ran to the end, and where
    finishes = Counter[str]()
    successes = Counter[str]()
    for name in names:
        text = (fleet.logs / f"{name}.log").read_text(errors="replace")
        finishes.update(re.findall(r"task (\w+) finished \(attempt \d+\)", text))
        successes.update(re.findall(r"task_uid='(\w+)'\) ended with status: Success", text))
    assert finishes == successes == Counter(uids), "a task finished more (or less) than once"
    assert {row["worker"] for row in final.values()} <= set(names)

    # Key B is served at one of the next free workers, not behind A's backlog: the first of B's tasks to
    # start (with affinity, the one of a model a free worker holds) against B's arrival (its first submit).
    arrived = final[b_first]["created_at"]
    served = min(final[uid]["started_at"] for uid in uids[A_TASKS:])
    b_position = 1 + sum(1 for row in final.values() if arrived < row["started_at"] < served)
    a_backlog = sum(1 for uid in uids[:A_TASKS] if final[uid]["started_at"] > arrived)
    b_wait = (served - arrived).total_seconds()
    return Phase(label, loads, b_position, a_backlog, b_wait, victim, killed_task, attempts, seconds)


def check_results(fleet: Fleet, s3_endpoint: str, client: Client, uids: list[str]) -> int:
    """Every image of `uids` downloads from a presigned URL of the S3 store; returns the count."""
    count = 0
    with httpx.Client(timeout=30) as http:
        for start in range(0, len(uids), 50):
            for detail in client.list_tasks_details(uids[start : start + 50]):
                assert detail["Status"] == "Finished"
                for url in detail["ImgList"]:
                    assert url.startswith(f"{s3_endpoint}/{BUCKET}/results/"), url
                    assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url, url
                    got = http.get(url)
                    assert got.status_code == 200, (url, got.status_code)
                    assert Image.open(BytesIO(got.content)).size == (64, 64)
                    count += 1
    assert not (Path(fleet.env["PICSERVE_DATA_DIR"]) / "results").exists() or not any(
        (Path(fleet.env["PICSERVE_DATA_DIR"]) / "results").iterdir()
    ), "results were written to the data folder"
    return count


def used_credits(url: str, public_key: str) -> int:
    found = rows(url, "SELECT used_credits FROM picserve_keys WHERE public_key = %(k)s", {"k": public_key})
    return int(found[0]["used_credits"])


def test_a_fleet_of_two_apis_and_three_workers_routes_by_model_and_survives_a_killed_worker(
    fleet: Fleet, s3_endpoint: str, report: Callable[[str], None]
) -> None:
    for index in range(2):
        fleet.api(index)
    key_a, key_b = make_key(fleet, "a"), make_key(fleet, "b")
    phases: dict[str, Phase] = {}
    with clients(fleet, key_a) as a, clients(fleet, key_b) as b:
        for label, wait in (("affinity", AFFINITY_WAIT), ("fifo", 0.0)):
            phases[label] = run_phase(fleet, label, wait, a, b)
        all_tasks = rows(fleet.url, "SELECT task_uid, public_key, cost FROM picserve_tasks")
        assert len(all_tasks) == 2 * (A_TASKS + B_TASKS)
        for key, client in ((key_a, a[1]), (key_b, b[0])):
            mine = [row for row in all_tasks if row["public_key"] == key["PublicKey"]]
            # charged once per task: the killed run was not charged again
            assert used_credits(fleet.url, key["PublicKey"]) == sum(row["cost"] for row in mine)
            images = check_results(fleet, s3_endpoint, client, [row["task_uid"] for row in mine])
            assert images == len(mine)

    on, off = phases["affinity"], phases["fifo"]
    for phase in (on, off):
        report(
            f"fleet, affinity {'on' if phase is on else 'off'}: {A_TASKS + B_TASKS} tasks in {phase.seconds:.1f} s "
            "on 3 workers "
            f"(one killed mid-task, its task run again: attempts {phase.attempts[phase.killed_task]}); "
            f"{phase.loads} model loads; key B, arriving behind {phase.a_backlog} queued tasks of key A, had its "
            f"first task started {phase.b_position}. after it arrived, {phase.b_wait:.2f} s later"
        )
    # at least half fewer loads (measured: 4-6 against 14-16; the killed worker's restart loads again,
    # and on a loaded machine a fetch may land before the holder's: 3x was met only most of the time)
    assert on.loads * 2 <= off.loads, (on.loads, off.loads)
    # Fair share, with or without affinity: a task of B is the next task a worker starts (a fetch under
    # way aside); affinity only picks which of B's tasks. (The wait in seconds is reported, not
    # asserted: it is however long the workers' current tasks still take.)
    for phase in (on, off):
        assert phase.b_position <= WORKERS + 1, (phase.label, phase.b_position, phase.a_backlog)

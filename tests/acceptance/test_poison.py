"""A poison task under `picserve serve` (issue 22): a request whose run kills the worker that takes it,
every time, ends Error 505 after PICSERVE_MAX_LOST_RUNS losses instead of taking every worker of the
fleet down in turn, forever; the tasks queued behind it finish, and the fleet is whole afterwards."""

from __future__ import annotations

import json
import os
import signal

import psutil
import psycopg

from picserve.sdk import Client
from tests.acceptance.test_serve import worker_children
from tests.processes import QUIET, create_key, picserve, running, serve, wait_for

#: long enough on the tiny model to be found running and killed (about 4 s on one core)
POISON = {
    "MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 60}},
    "PositivePrompts": ["the request that kills its worker"],
    "Width": 256,
    "Height": 256,
    "Seed": 666,
}


def ordinary(seed: int) -> dict[str, object]:
    return {
        "MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 6}},
        "PositivePrompts": ["a lighthouse"],
        "Width": 64,
        "Height": 64,
        "Seed": seed,
    }


def holder_pid(database_url: str, task_uid: str, after_attempt: int) -> int | None:
    """The pid of the worker running `task_uid` in an attempt after `after_attempt` (serve names its workers
    worker-0, worker-1, …; the registry has each one's pid), or None."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT w.pid FROM picserve_tasks t JOIN picserve_workers w ON w.name = t.worker "
            "WHERE t.task_uid = %s AND t.status = 'Running' AND t.attempt > %s",
            (task_uid, after_attempt),
        ).fetchone()
    return None if row is None else int(row[0])


def test_a_task_that_kills_its_workers_ends_505_and_the_fleet_lives_on(database_url, models_dir, tmp_path):
    env = {
        **os.environ,
        **QUIET,
        "PICSERVE_DATABASE_URL": database_url,
        "PICSERVE_DATA_DIR": str(tmp_path / "data"),  # its secret.key seals the key for the API too
        "PICSERVE_HEARTBEAT_INTERVAL": "0.5",
        # a live worker starved of the CPU must not be taken for dead: that would be a loss without a kill
        "PICSERVE_STALLED_AFTER": "5",
        "PICSERVE_AFFINITY_WAIT": "0",
        "PICSERVE_MAX_LOST_RUNS": "2",
    }
    key = create_key("--credits", 1_000_000, name="fleet", env=env)
    server = serve(
        "--workers", 2, "--models-dir", models_dir, "--device", "cpu",
        log=tmp_path / "serve.log", env=env,
    )  # fmt: skip
    with running(server), Client(server.base, key["PublicKey"], key["PrivateKey"]) as client:
        assert len(worker_children(server.pid)) == 2
        poison = client.generate_images_sdxl(**POISON)
        queued = [client.generate_images_sdxl(**ordinary(seed)) for seed in range(4)]

        # Each time a worker takes the poison task, the "bug" kills that worker (SIGKILL, as the kernel's
        # out-of-memory killer would); the sweep finds it stalled and queues the task again, twice.
        killed: list[int] = []
        for attempt in range(3):
            pid = wait_for(
                lambda after=attempt: holder_pid(database_url, poison, after),
                timeout=120,
                what="the poison task running",
            )
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        detail = client.wait(poison, timeout=120)
        assert (detail["Status"], detail["ErrorCode"]) == ("Error", 505), detail
        assert detail["ErrorMassage"] == (
            "this task stopped its workers: 3 runs ended without it (its worker died: 3); "
            "it was not run again, and nothing was charged"
        )
        finished = [client.wait(uid, timeout=180) for uid in queued]
        assert [d["Status"] for d in finished] == ["Finished"] * 4, finished

        runs = picserve("tasks", "runs", poison, "--json", env=env)
        assert runs.returncode == 0, runs.stderr
        ends = [json.loads(line) for line in runs.stdout.splitlines()]
        assert [(r["Attempt"], r["EndedAs"]) for r in ends] == [(1, "lost"), (2, "lost"), (3, "lost")]
        assert all("no heartbeat from its worker for 5 s" in r["Detail"] for r in ends)
        assert {r["Worker"] for r in ends} <= {"worker-0", "worker-1"}
        listed = picserve("tasks", "list", "--status", "Error", env=env)
        (row,) = [line for line in listed.stdout.splitlines() if line.startswith(poison)]
        assert row.split()[1] == "Error" and row.split()[-1] == "505", listed.stdout  # STATUS … ERROR

        # the fleet is whole: two live workers under serve, both in the registry and healthy
        def whole() -> bool:
            children = worker_children(server.pid)
            rows = picserve("workers", "--json", env=env)
            live = [json.loads(line) for line in rows.stdout.splitlines() if line.startswith("{")]
            pids = {w["Pid"] for w in live if w["Live"] and not w["Unhealthy"]}
            return len(children) == 2 and {c.pid for c in children} <= pids

        wait_for(whole, timeout=60, what="two live workers again", every=1.0)
        assert not any(psutil.pid_exists(pid) for pid in killed)
    with psycopg.connect(database_url) as conn:
        [(used,)] = conn.execute("SELECT used_credits FROM picserve_keys WHERE public_key = %s", (key["PublicKey"],))
        costs = dict(conn.execute("SELECT task_uid, cost FROM picserve_tasks").fetchall())
    assert used == sum(costs[uid] for uid in queued)  # the four ordinary tasks, and not the poison task

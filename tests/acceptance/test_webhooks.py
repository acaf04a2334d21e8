"""Webhooks end to end: durable, signed, exactly one `completed` per task, through a worker's death.

Real processes on a real PostgreSQL (the session's embedded one): `picserve serve --workers 0` (which
runs the webhook deliveries) and two `picserve worker` processes with the tiny SDXL on the CPU. A
receiver on 127.0.0.1 (allowed by PICSERVE_WEBHOOK_ALLOW) answers HTTP 500 to the first two
deliveries it gets. Tasks ask for all three events; the worker running the first (long) task is
killed with SIGKILL, and its task runs again on the other after PICSERVE_STALLED_AFTER. The receiver
then holds, per task: a `start`, throttled `progress` events, and exactly one `completed` delivery id;
every signature verifies; the two refused deliveries were retried.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from picserve.sdk import Client
from picserve.webhooks import signing
from tests import processes
from tests.processes import create_key, wait_for
from tests.webhook_receiver import Receiver, receiving

TASKS = 4
#: the first task is long, so that its worker is killed while it runs
LONG_STEPS, STEPS = 60, 12
STALLED_AFTER = 5.0  # a live worker starved of the CPU (2 cores, other tests beside it) is not taken for dead
FAIL_FIRST = 2


def rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Answers 500 to the first FAIL_FIRST deliveries it gets."""
    with receiving(fail_first=FAIL_FIRST) as server:
        yield server


def test_webhooks_survive_a_killed_worker_and_complete_once(
    tmp_path: Path, models_dir: Path, database_url: str, receiver: Receiver, report
) -> None:
    started = time.monotonic()
    env = {
        **os.environ,
        "PICSERVE_DATABASE_URL": database_url,
        "PICSERVE_DATA_DIR": str(tmp_path / "data"),
        "PICSERVE_MODELS_DIR": str(models_dir),
        "PICSERVE_HEARTBEAT_INTERVAL": "0.5",
        "PICSERVE_STALLED_AFTER": str(STALLED_AFTER),
        "PICSERVE_PROGRESS_INTERVAL": "0.1",
        "PICSERVE_WEBHOOK_PROGRESS_INTERVAL": "0.5",
        "PICSERVE_WEBHOOK_ALLOW": "127.0.0.1/32",
        "PICSERVE_WEBHOOK_RETRY_DELAY": "0.5",
        "PICSERVE_AFFINITY_WAIT": "0",
        "PICSERVE_PREVIEWS": "false",
        "PICSERVE_LOG_LEVEL": "info",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:

        def start_worker(name: str) -> processes.Process:
            process = processes.worker("--name", name, "--device", "cpu", log=logs / f"{name}.log", env=env)
            stack.callback(process.stop, 30)
            return process

        def tail() -> str:
            return "\n".join(
                f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                for p in sorted(logs.glob("*.log"))
            )

        api = processes.serve("--workers", "0", log=logs / "api.log", env=env)
        stack.callback(api.stop, 30)
        base = api.base
        key = create_key("--credits", 1_000_000, name="hooks", env=env)
        workers = {name: start_worker(name) for name in ("w1", "w2")}
        wait_for(lambda: len(rows(database_url, "SELECT name FROM picserve_workers")) == 2, 120, "2 workers", every=0.2)

        client = Client(base, key["PublicKey"], key["PrivateKey"])
        events = ["start", "progress", "completed"]
        uids = [
            client.call(
                "GenerateImagesSDXL",
                MainModel={"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": LONG_STEPS if i == 0 else STEPS}},
                PositivePrompts=[f"a lighthouse, variation {i}"],
                Width=64,
                Height=64,
                Seed=i,
                TranslatePrompts=False,
                Webhook={"Url": receiver.url, "Events": events},
            )["TaskUID"]
            for i in range(TASKS)
        ]

        # the first task's worker dies mid-task (after its start event was made)
        def running_first() -> str | None:
            found = rows(
                database_url,
                "SELECT worker FROM picserve_tasks WHERE task_uid = %(u)s AND status = 'Running' AND progress > 0.1",
                {"u": uids[0]},
            )
            return found[0]["worker"] if found else None

        victim = wait_for(running_first, 60, "the first task running", every=0.05)
        workers[victim].kill()
        killed_at = time.monotonic()

        def all_finished() -> bool:
            found = rows(database_url, "SELECT status FROM picserve_tasks WHERE task_uid = ANY(%(u)s)", {"u": uids})
            return [r["status"] for r in found] == ["Finished"] * TASKS

        wait_for(all_finished, 90, f"every task finished\n{tail()}", every=0.2)
        finished_at = time.monotonic()

        def all_delivered() -> list[dict[str, Any]]:
            found = rows(database_url, "SELECT * FROM picserve_webhook_deliveries")
            completed = [d for d in found if d["event"] == "completed"]
            return found if len(completed) == TASKS and all(d["state"] == "delivered" for d in found) else []

        deliveries = wait_for(all_delivered, 30, f"every delivery made\n{tail()}", every=0.2)
        attempts = {
            r["task_uid"]: r["attempt"] for r in rows(database_url, "SELECT task_uid, attempt FROM picserve_tasks")
        }

    # --- what the receiver got ----------------------------------------------------------------------
    received = list(receiver.received)
    by_task: dict[str, Counter[str]] = defaultdict(Counter)
    completed_ids: dict[str, set[str]] = defaultdict(set)
    for item in received:
        headers, body = item["headers"], item["body"]
        assert signing.verify(
            key["PrivateKey"], headers["X-Picserve-Timestamp"], body, headers["X-Picserve-Signature"]
        ), headers
        detail = json.loads(body)
        assert detail["Event"] == headers["X-Picserve-Event"]
        uid = detail["TaskUID"]
        by_task[uid][detail["Event"]] += 1
        if detail["Event"] == "completed":
            completed_ids[uid].add(headers["X-Picserve-Delivery"])
            assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 1
        if detail["Event"] == "progress":
            # 1.0 too: the last step is written before the VAE decode, while the task still runs
            assert detail["Status"] == "Running" and 0 <= detail["Progress"] <= 1

    # retried: the first two were refused with 500 and sent again under the same delivery id
    failed_ids = [r["headers"]["X-Picserve-Delivery"] for r in received[:FAIL_FIRST]]
    assert all(sum(1 for r in received if r["headers"]["X-Picserve-Delivery"] == d) >= 2 for d in failed_ids)
    retried = {d["delivery_id"]: d["attempts"] for d in deliveries if d["attempts"] > 1}
    assert set(failed_ids) <= set(retried), retried
    # exactly one completed delivery id per task (after dedupe), and every task told so
    assert {uid: len(ids) for uid, ids in completed_ids.items()} == dict.fromkeys(uids, 1)
    assert set(by_task) == set(uids)
    for uid in uids:
        assert by_task[uid]["start"] >= 1, (uid, by_task[uid])
    # the killed task started twice (two runs), and still completed once
    assert attempts[uids[0]] == 2 and by_task[uids[0]]["start"] >= 2
    assert sum(by_task[uid]["progress"] for uid in uids) >= 1
    db_completed = Counter(d["task_uid"] for d in deliveries if d["event"] == "completed")
    assert db_completed == Counter(dict.fromkeys(uids, 1))

    elapsed = time.monotonic() - started
    report(
        f"webhooks: {len(received)} requests for {len(deliveries)} deliveries "
        f"({sum(c['start'] for c in by_task.values())} start, {sum(c['progress'] for c in by_task.values())} progress, "
        f"{sum(c['completed'] for c in by_task.values())} completed), {len(retried)} retried "
        f"(attempts {sorted(retried.values())}); worker {victim} killed, every task finished "
        f"{finished_at - killed_at:.1f} s later; {elapsed:.1f} s in all"
    )

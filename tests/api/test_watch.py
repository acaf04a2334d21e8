"""Following tasks from a client (picserve/cli/watch.py, behind `picserve generate` and `tasks wait`):
queue positions, progress lines, the end; and QueuePosition in TaskDetail."""

from __future__ import annotations

import io
import threading
import time

import pytest
from rich.console import Console

from picserve import errors
from picserve.cli import watch
from picserve.engine.fake import FakeEngine

from .conftest import request


def test_queued_tasks_carry_their_queue_position_until_they_run(stack):
    alice, bob = stack.client(name="alice"), stack.client(name="bob")
    a1 = alice.generate_images_sdxl(**request(Seed=1))
    b1 = bob.generate_images_sdxl(**request(Seed=2))
    a2 = alice.generate_images_sdxl(**request(Seed=3))
    positions = {d["TaskUID"]: d["QueuePosition"] for d in alice.list_tasks_details([a1, a2])}
    assert positions == {a1: 1, a2: 3}  # bob's task is between them
    assert bob.list_tasks_details([b1])[0]["QueuePosition"] == 2
    stack.run_worker()
    assert all("QueuePosition" not in d for d in alice.list_tasks_details([a1, a2]))


def test_follow_prints_each_change_of_state_until_every_task_ended(stack):
    client = stack.client()
    uids = [client.generate_images_sdxl(**request(Seed=i)) for i in range(2)]
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    tasks = [watch.Followed(uid, steps=6) for uid in uids]
    done: dict[str, list] = {}
    follower = threading.Thread(
        target=lambda: done.update(details=watch.follow(client, tasks, timeout=60, poll=0.02, console=console))
    )
    follower.start()
    time.sleep(0.3)
    stack.run_worker(FakeEngine(step_seconds=0.05))
    follower.join(60)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"{uids[0]} Queuing #1", f"{uids[1]} Queuing #2"]
    assert any(line.startswith(f"{uids[0]} Running ") and "/6 steps" in line for line in lines), lines
    assert lines[-1] in (f"{uids[0]} Finished", f"{uids[1]} Finished")
    assert [d["Status"] for d in done["details"]] == ["Finished", "Finished"]


def test_follow_gives_up_at_the_timeout(stack):
    client = stack.client()
    uid = client.generate_images_sdxl(**request())
    console = Console(file=io.StringIO(), force_terminal=False)
    with pytest.raises(errors.WaitTimeout, match=uid):
        watch.follow(client, [watch.Followed(uid)], timeout=0.1, poll=0.02, console=console)

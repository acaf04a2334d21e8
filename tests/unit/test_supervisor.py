"""The worker supervisor: restart backoff, exit reasons, and restarts of a real crashing child."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time

import pytest

from picserve import supervisor
from picserve.supervisor import Backoff, Supervisor, exit_reason


def test_backoff_doubles_per_quick_crash_up_to_the_cap():
    backoff = Backoff(first=1.0, cap=60.0, reset_after=60.0)
    assert [backoff.next_delay(ran_for=0.5) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_starts_over_after_a_long_run():
    backoff = Backoff(first=1.0, cap=60.0, reset_after=60.0)
    assert [backoff.next_delay(ran_for=1) for _ in range(4)] == [1, 2, 4, 8]
    assert backoff.next_delay(ran_for=60) == 1  # it ran a while: this crash is the first again
    assert backoff.next_delay(ran_for=59) == 2  # a quick crash after it counts on from there


def test_backoff_never_overflows():
    backoff = Backoff(first=1.0, cap=60.0)
    for _ in range(5000):
        assert backoff.next_delay(ran_for=0) <= 60


@pytest.mark.parametrize(
    ("returncode", "reason"),
    [
        (1, "exited with code 1"),
        (0, "exited with code 0"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
        (-200, "was killed by signal 200"),
    ],
)
def test_exit_reason(returncode, reason):
    assert exit_reason(returncode) == reason


def test_die_with_parent_leaves_when_the_parent_is_not_the_expected_one():
    # A parent pid that is not ours: `serve` died before the worker could ask for the signal.
    code = "from picserve import supervisor; supervisor.die_with_parent(-1); print('ran on')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if sys.platform.startswith("linux"):
        assert result.returncode == 0 and "ran on" not in result.stdout, result.stderr
    else:
        assert "ran on" in result.stdout


def test_die_with_parent_goes_on_under_its_parent():
    code = "import os; from picserve import supervisor; supervisor.die_with_parent(os.getppid()); print('ran on')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ran on", result.stderr


def _fake_child(code: str):
    def spawn(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", code])

    return spawn


def test_a_crashing_child_is_restarted_with_backoff_and_the_reason_logged(caplog):
    caplog.set_level(logging.WARNING, logger=supervisor.__name__)
    starts: list[float] = []

    def spawn(index: int) -> subprocess.Popen[bytes]:
        starts.append(time.monotonic())
        return _fake_child("import sys; sys.exit(3)")(index)

    sup = Supervisor(spawn, 1, backoff=lambda: Backoff(first=0.1, cap=0.4), poll_interval=0.02)
    try:
        deadline = time.monotonic() + 30
        while len(starts) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sup.stop(timeout=5)
    assert len(starts) >= 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.1, 0.2, 0.4, 0.4 s of backoff (plus the child's own run time)
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4 and gaps[3] >= 0.4
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("worker-0 exited with code 3 after") and "again in 0.1 s" in m for m in messages)
    assert any("again in 0.4 s" in m for m in messages)


def test_a_killed_child_is_named_by_its_signal(caplog):
    caplog.set_level(logging.WARNING, logger=supervisor.__name__)
    sup = Supervisor(
        _fake_child("import time; time.sleep(60)"), 2, backoff=lambda: Backoff(first=0.05), poll_interval=0.02
    )
    try:
        first = sup.children[1]
        first.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(sup.children) == 2 and first not in sup.children):
            time.sleep(0.05)
        assert len(sup.children) == 2 and first not in sup.children
    finally:
        sup.stop(timeout=5)
    assert any(r.getMessage().startswith("worker-1 was killed by SIGKILL") for r in caplog.records)


def test_stop_terminates_then_kills_a_child_that_ignores_sigterm():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"

    def spawn(index: int) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert child.stdout is not None
        child.stdout.readline()  # its SIGTERM handler is in place
        return child

    sup = Supervisor(spawn, 1, poll_interval=0.02)
    (child,) = sup.children
    began = time.monotonic()
    sup.stop(timeout=0.5)
    assert child.returncode == -signal.SIGKILL
    assert 0.4 < time.monotonic() - began < 10
    assert sup.children == [child]  # not restarted after stop

"""The worker supervisor: restart backoff, exit reasons, and restarts of a real crashing child."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time
import types

import pytest

from picserve import supervisor
from picserve.config import Settings
from picserve.resilience import Backoff
from picserve.supervisor import Supervisor, exit_reason
from picserve.tasks import embedded_pg


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

    sup = Supervisor(spawn, 1, backoff=lambda: Backoff(first=0.05, cap=0.2), poll_interval=0.02)
    try:
        deadline = time.monotonic() + 30
        while len(starts) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sup.stop(timeout=5)
    assert len(starts) >= 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.05, 0.1, 0.2, 0.2 s of backoff (plus the child's own run time)
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[3] >= 0.2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("worker-0 exited with code 3 after") and "again in 0.05 s" in m for m in messages)
    assert any("again in 0.2 s" in m for m in messages)


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


# One GPU per worker: the plan, the GPU count, and what each child gets.


@pytest.mark.parametrize("device", ["auto", "cuda"])
@pytest.mark.parametrize(
    ("count", "workers", "expected"),
    [
        (1, 1, ["cuda:0"]),
        (2, 2, ["cuda:0", "cuda:1"]),
        (4, 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        (4, 2, ["cuda:0", "cuda:1"]),  # fewer workers than GPUs: the first ones
        (4, 0, []),  # an API-only serve
    ],
)
def test_each_worker_gets_its_own_gpu(device, count, workers, expected):
    assert supervisor.worker_devices(device, workers, count) == expected


@pytest.mark.parametrize(
    ("device", "count", "workers"), [("auto", 2, 3), ("auto", 1, 2), ("cuda", 0, 1), ("cuda", 4, 8)]
)
def test_more_workers_than_gpus_is_refused_saying_why_and_what_to_do(device, count, workers):
    with pytest.raises(ValueError, match="need") as caught:
        supervisor.worker_devices(device, workers, count)
    message = str(caught.value)
    need = "worker on device {!r} needs a GPU" if workers == 1 else "workers on device {!r} need one GPU each"
    assert message.startswith(f"{workers} {need.format(device)}, and ")
    assert {0: "no GPU is", 1: "1 GPU is"}.get(count, f"{count} GPUs are") + " visible" in message
    if count:  # fewer workers, or a device they share
        assert f"lower --workers / PICSERVE_WORKERS to at most {count}" in message
    else:  # no GPU at all: only another device
        assert "--workers" not in message
    assert "name the device every worker shares (--device / PICSERVE_DEVICE: " in message


def test_a_cpu_host_runs_as_many_cpu_workers_as_asked():
    assert supervisor.worker_devices("auto", 3, 0) == ["auto", "auto", "auto"]  # auto is the CPU there
    assert supervisor.worker_devices("cpu", 3, 0) == ["cpu", "cpu", "cpu"]


@pytest.mark.parametrize("device", ["cpu", "cuda:1", "mps"])
def test_an_explicit_device_goes_to_every_worker_as_it_is(device):
    assert supervisor.worker_devices(device, 3, 2) == [device] * 3  # even more workers than GPUs


@pytest.fixture
def torch_stub(monkeypatch) -> types.SimpleNamespace:
    """A stand-in for torch and its CUDA API as `visible_gpus` imports it: the fast tier loads no torch
    (importing the real one took 3 s of it)."""
    cuda = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
    stub = types.SimpleNamespace(cuda=cuda)
    monkeypatch.setitem(sys.modules, "torch", stub)
    return stub


@pytest.fixture
def gpus(monkeypatch, torch_stub):
    """Sets how many CUDA devices torch reports (CUDA_VISIBLE_DEVICES applied); returns the setter."""

    def set_count(count: int) -> None:
        monkeypatch.setattr(supervisor, "_gpu_driver", lambda: True)
        monkeypatch.setattr(torch_stub.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch_stub.cuda, "device_count", lambda: count)

    return set_count


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_visible_gpus_is_torchs_count(gpus, count):
    gpus(count)
    assert supervisor.visible_gpus() == count


def test_without_a_gpu_driver_no_gpu_is_counted_and_torch_is_not_asked(monkeypatch, torch_stub):
    monkeypatch.setattr(supervisor, "_gpu_driver", lambda: False)
    monkeypatch.setattr(torch_stub.cuda, "device_count", lambda: pytest.fail("torch was asked"))
    assert supervisor.visible_gpus() == 0


class _FakeChild:
    pid = 4242

    def poll(self):
        return None


@pytest.fixture
def popen(monkeypatch):
    """subprocess.Popen stubbed: each call's command and environment, in order."""
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_popen(command, env):
        calls.append((command, env))
        return _FakeChild()

    monkeypatch.setattr(supervisor.subprocess, "Popen", fake_popen)
    return calls


@pytest.mark.parametrize(
    ("device", "count", "expected"),
    [
        ("auto", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("cuda", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("auto", 0, ["auto"] * 4),
        ("cpu", 2, ["cpu"] * 4),
        ("cuda:1", 2, ["cuda:1"] * 4),
    ],
)
def test_spawn_worker_gives_each_child_its_device(gpus, popen, device, count, expected):
    gpus(count)
    settings = Settings.load(env={}, workers=4, device=device)
    devices = supervisor._worker_devices(settings)
    for index in range(4):
        supervisor.spawn_worker(settings, "postgresql://db", index, devices=devices)
    assert [env["PICSERVE_DEVICE"] for _, env in popen] == expected
    assert [command[command.index("--name") + 1] for command, _ in popen] == [f"worker-{i}" for i in range(4)]
    assert {env["PICSERVE_DATABASE_URL"] for _, env in popen} == {"postgresql://db"}


def test_spawn_worker_without_a_plan_passes_the_settings_device(popen):
    supervisor.spawn_worker(Settings.load(env={}, device="cuda:1"), "postgresql://db", 0)
    assert popen[0][1]["PICSERVE_DEVICE"] == "cuda:1"


def test_serve_refuses_more_workers_than_gpus_before_starting_anything(gpus, monkeypatch):
    gpus(2)

    def no_database(settings):
        raise AssertionError("the database was started")

    monkeypatch.setattr(embedded_pg, "database", no_database)
    with pytest.raises(SystemExit) as caught:
        supervisor.serve(Settings.load(env={}, workers=3))
    assert str(caught.value).startswith("picserve serve: 3 workers on device 'auto' need one GPU each")


def test_the_gpus_are_not_counted_where_the_plan_does_not_need_them(monkeypatch):
    def counted() -> int:
        raise AssertionError("torch was asked")

    monkeypatch.setattr(supervisor, "visible_gpus", counted)
    assert supervisor._worker_devices(Settings.load(env={}, workers=0)) == []  # an API node
    assert supervisor._worker_devices(Settings.load(env={}, workers=2, device="cpu")) == ["cpu", "cpu"]

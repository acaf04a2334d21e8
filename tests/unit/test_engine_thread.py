"""The worker's engine thread (worker/engine_thread.py): every call on one thread, in order, in the
caller's context; and a hung call never holds the process's exit (a worker whose run hung past its
deadline exits to be restarted, leaving the thread behind)."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
import time

import pytest

from picserve.worker.engine_thread import EngineThread


def test_calls_run_in_order_on_one_thread_in_the_callers_context() -> None:
    engine = EngineThread(name="test-engine")
    where = contextvars.ContextVar("where", default="none")
    where.set("caller")
    seen: list[tuple[int, str, str]] = []

    def note(i: int) -> int:
        seen.append((i, threading.current_thread().name, where.get()))
        return i * 2

    futures = [engine.submit(note, i) for i in range(5)]
    assert [f.result(5) for f in futures] == [0, 2, 4, 6, 8]
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 4]
    assert {(name, ctx) for _, name, ctx in seen} == {("test-engine", "caller")}
    assert asyncio.run(engine.call(sum, [1, 2, 3])) == 6
    with pytest.raises(ZeroDivisionError):
        engine.submit(lambda: 1 / 0).result(5)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(note, 9)


def test_a_hung_call_does_not_hold_the_process_exit() -> None:
    script = (
        "import time\n"
        "from picserve.worker.engine_thread import EngineThread\n"
        "engine = EngineThread()\n"
        "engine.submit(time.sleep, 3600)\n"
        "time.sleep(0.2)\n"
        "engine.close(wait=False)\n"
        "raise SystemExit(75)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 75 and time.monotonic() - started < 30

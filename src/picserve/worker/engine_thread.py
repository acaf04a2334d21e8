"""EngineThread: the one thread that makes every torch call of a worker.

Why one dedicated thread: PyTorch's CPU kernels run on an OpenMP thread team per calling thread. When
torch calls hop between threads (as `asyncio.to_thread` does, taking whichever pool thread is idle),
a second team is created and the two fight for the cores. Measured on a 2-core machine with the tiny
SDXL at 256², 20 steps: 0.57 s per image with every torch call on one thread, 1.3–1.5 s once calls
were spread over two (even the first thread slowed once another had run torch). So loading,
generating, PNG encoding and reading what is loaded all run here, one at a time, in order (the
model of InvokeAI's one-thread-per-device and cog's single predictor worker).

The thread is a daemon: a worker whose engine call hung (a deadlock in a native library, a CUDA call
that never completes; jobs.py's run deadline finds it) can still exit, to be started again, where a
thread pool's worker would be joined at exit, forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["EngineThread"]

P = ParamSpec("P")
T = TypeVar("T")

_Call = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class EngineThread:
    """A single worker thread; `submit` queues a call and returns its future, `call` awaits one."""

    def __init__(self, name: str = "picserve-engine") -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Queue `fn(*args, **kwargs)`; it runs in a copy of the caller's context (as `asyncio.to_thread`
        does), so what the caller's contextvars hold (the log context) holds there too."""
        if self._closed:
            raise RuntimeError("the engine thread is closed")
        context = contextvars.copy_context()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, lambda: context.run(fn, *args, **kwargs)))
        return future

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the engine thread and await its result (the call itself is not cancellable)."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(fn, *args, **kwargs)))

    def close(self, wait: bool = True) -> None:
        """Let queued calls finish, then stop the thread; with `wait`, until it has stopped. A hung
        thread is left behind (`wait=False`): being a daemon, it does not keep the process alive."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # the caller gets it, as from a thread pool
                future.set_exception(exc)
            else:
                future.set_result(result)

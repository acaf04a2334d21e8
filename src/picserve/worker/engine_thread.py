"""EngineThread: the one thread that makes every torch call of a worker.

Why one dedicated thread: PyTorch's CPU kernels run on an OpenMP thread team per calling thread. When
torch calls hop between threads (as `asyncio.to_thread` does, taking whichever pool thread is idle),
a second team is created and the two fight for the cores. Measured on a 2-core machine with the tiny
SDXL at 256², 20 steps: 0.57 s per image with every torch call on one thread, 1.3–1.5 s once calls
were spread over two (even the first thread slowed once another had run torch). So loading,
generating, PNG encoding and reading what is loaded all run here, one at a time, in order (the
model of InvokeAI's one-thread-per-device and cog's single predictor worker).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["EngineThread"]

P = ParamSpec("P")
T = TypeVar("T")


class EngineThread:
    """A single worker thread; `submit` queues a call and returns its future, `call` awaits one."""

    def __init__(self, name: str = "picserve-engine") -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Queue `fn(*args, **kwargs)`; it runs in a copy of the caller's context (as `asyncio.to_thread`
        does), so what the caller's contextvars hold (the log context) holds there too."""
        context = contextvars.copy_context()

        def call() -> T:
            return context.run(fn, *args, **kwargs)

        return self._executor.submit(call)

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the engine thread and await its result (the call itself is not cancellable)."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(fn, *args, **kwargs)))

    def close(self) -> None:
        """Let queued calls finish, then stop the thread."""
        self._executor.shutdown(wait=True)

"""Outages and restarts, decided in one place: is the database unreachable, retry a statement until
it answers, and start a loop again after a backoff when it ends on an error.

Every process of picserve (API, worker, supervisor, webhook runner) meets the same failures: the
database going away, procrastinate's loop ending on an error, a child process crashing. What counts
as "the database is unreachable" is decided by `unreachable` alone (the worker's retries, its restart
loop, the stalled-job sweep and the repository's `DatabaseUnreachable` all ask it), and every
restart-after-backoff loop is `run_restarting` with a `Backoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import psycopg
import psycopg_pool

from picserve import errors

__all__ = ["Backoff", "Retry", "maybe_applied", "root_cause", "run_restarting", "unreachable"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (ServerBusy ← ConnectorException ← psycopg's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached — the server down, starting or shutting
    down, the connection lost, no pooled connection in time — rather than a statement refused. The
    repository's `DatabaseUnreachable` counts, and so does any error raised from psycopg's
    OperationalError (procrastinate's ConnectorException wraps it). A pool being closed (this process
    shutting down) does not count, nor does a full queue (a plain ServerBusy)."""
    for cause in _causes(exc):
        if isinstance(cause, psycopg_pool.PoolClosed):
            return False
        if isinstance(cause, (errors.DatabaseUnreachable, psycopg.OperationalError)):
            return True
    return False


def maybe_applied(exc: BaseException) -> bool:
    """Whether a statement that failed with `exc` may have been applied all the same: its connection
    broke after it was sent. Not when no connection was had at all (the pool's timeout)."""
    return unreachable(exc) and not any(isinstance(cause, psycopg_pool.PoolTimeout) for cause in _causes(exc))


_maybe_applied = maybe_applied  # Retry's default (its parameter of that name shadows the function)


def root_cause(exc: BaseException) -> str:
    """The innermost cause of `exc`, in one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@dataclass
class Backoff:
    """The delay before something that ended on an error (a worker process, a loop) is started again.

    `first` seconds after a crash, doubling with each crash that follows a short run, up to `cap`;
    a run of `reset_after` seconds or more before crashing starts over at `first`.
    """

    first: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0
    crashes: int = 0  # consecutive crashes after short runs

    def next_delay(self, ran_for: float) -> float:
        """The delay after a crash of a run that lasted `ran_for` seconds; counts the crash."""
        if ran_for >= self.reset_after:
            self.crashes = 0
        delay = min(self.cap, self.first * 2.0 ** min(self.crashes, 64))
        self.crashes += 1
        return delay


async def run_restarting(
    what: str,
    run: Callable[[], Awaitable[None]],
    *,
    fatal: Callable[[Exception], bool] = lambda exc: False,
    stopped: asyncio.Event | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Await `run()` until it returns; when it raises, start it again after `backoff` (1 s doubling to
    30 s; a run of a minute starts over at 1 s), logging why. An error for which `fatal(exc)` holds is
    raised instead. While waiting, `stopped` being set ends the loop. A cancellation always propagates,
    even when `run` turned it into an error of its own on the way out (procrastinate's loop ending on
    its database closing): restarting then would swallow the cancel and hold its event loop's shutdown.
    """
    backoff = backoff or Backoff(first=1.0, cap=30.0, reset_after=60.0)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError() from exc
            if fatal(exc):
                raise
            delay = backoff.next_delay(loop.time() - started)
            log.warning(
                "%s ended (%s); starting it again in %g s", what, root_cause(exc), delay, exc_info=not unreachable(exc)
            )
        if stopped is None:
            await asyncio.sleep(delay)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), delay)
        if stopped.is_set():
            return


class Retry:
    """Runs a worker's database statement again while the database is unreachable, until it answers.

    `transient(exc)` says whether a failure means "unreachable, try again" and `maybe_applied(exc)`
    whether the statement may have been applied all the same (its connection broke after it was sent);
    both default to this module's `unreachable` and `maybe_applied`. Waits grow from
    `first_delay` to `max_delay` seconds; each attempt also waits up to the pool's timeout for a
    connection. Once `stop(grace)` is called (the worker is shutting down) failures are retried for
    `grace` more seconds only, then raised — at once for a statement run with `patient=False`, which
    is not worth waiting for (fetching the next job, say). What a stopping worker could not write, the
    stalled-worker sweep recovers: its task is queued again once its heartbeats stop.
    """

    def __init__(
        self,
        transient: Callable[[BaseException], bool] | None = None,
        maybe_applied: Callable[[BaseException], bool] | None = None,
        first_delay: float = 0.2,
        max_delay: float = 2.0,
    ) -> None:
        self.transient = transient or unreachable
        self.maybe_applied = maybe_applied or _maybe_applied
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._give_up_at: float | None = None

    def stop(self, grace: float) -> None:
        """From now on, give up on a failure `grace` seconds from now (the earliest call wins)."""
        if self._give_up_at is None:
            self._give_up_at = time.monotonic() + grace

    @property
    def stopping(self) -> bool:
        return self._give_up_at is not None

    async def run(self, what: str, attempt: Callable[[], Awaitable[T]], *, patient: bool = True) -> T:
        """`attempt()`'s result, attempted as often as the database is unreachable."""
        result, _ = await self.run_tracked(what, attempt, patient=patient)
        return result

    async def run_tracked(
        self, what: str, attempt: Callable[[], Awaitable[T]], *, patient: bool = True
    ) -> tuple[T, bool]:
        """`attempt()`'s result, and whether a failed attempt before it may have been applied."""
        delay, failed_at, maybe_applied = self.first_delay, 0.0, False
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if not self.transient(exc):
                    raise
                now = time.monotonic()
                if self._give_up_at is not None and (now >= self._give_up_at or not patient):
                    log.warning("%s: database still unreachable while stopping; giving up (%s)", what, root_cause(exc))
                    raise
                maybe_applied = maybe_applied or self.maybe_applied(exc)
                if not failed_at:
                    failed_at = now
                    log.warning("%s: database unreachable (%s); retrying until it answers", what, root_cause(exc))
                else:
                    log.debug("%s: database still unreachable (%s)", what, root_cause(exc))
                if self._give_up_at is not None:
                    delay = min(delay, max(0.0, self._give_up_at - now))
                await asyncio.sleep(delay)
                delay = min(self.max_delay, delay * 2)
                continue
            if failed_at:
                log.info("%s: done after the database was unreachable for %.1f s", what, time.monotonic() - failed_at)
            return result, maybe_applied

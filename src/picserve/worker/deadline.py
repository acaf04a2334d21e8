"""Run deadlines: a run that gives no sign of life for longer than its limit is abandoned.

A worker whose engine call never returns (a deadlock in a native library, a CUDA call that never
completes) while its event loop goes on beating would hold its task `Running`, and serve nothing
else, forever: the stalled-worker sweep only finds workers that stopped beating. So the job watches
its own run (jobs.py): each denoising step is a sign of life (a slow but moving run is never
abandoned), and a run silent for longer than its limit is given up. Its task is queued again under
the attempt limit (a hang counts as a lost run, `domain.RunEnd.TIMED_OUT`) or ends Error 505; the
engine is told to stop at its next step, and if the call has not returned `grace` seconds later,
the worker marks itself unhealthy and exits to be started again (`jobs.DeviceFailure`, exit code 75):
one hang costs one run, not the worker.

The limit scales with the run's work (`ActionSpec.work()`: pixels × steps × images for a generation)
at the speed this worker measured on its earlier runs of the kind (`Speedometer`), times a margin
(`factor`), kept between a floor (a cold model load, a first `torch.compile`, a big VAE decode are
silent) and a cap. Before a worker has finished a run of the kind it assumes `speed` (a setting;
unknown: the cap). AI Horde scales its per-job time limit by resolution and steps the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from picserve.config import Settings

__all__ = ["Deadline", "DeadlinePolicy", "RunHung", "Speedometer"]


@dataclass(frozen=True)
class DeadlinePolicy:
    """How long a run may be silent (PICSERVE_RUN_DEADLINE_*, PICSERVE_RUN_SPEED)."""

    factor: float = Settings.run_deadline_factor
    floor: float = Settings.run_deadline_floor
    cap: float = Settings.run_deadline_cap
    #: work per second assumed before the worker measured its own (0: unknown)
    speed: float = Settings.run_speed
    grace: float = Settings.run_deadline_grace

    def __post_init__(self) -> None:
        for name in ("factor", "floor", "cap", "speed", "grace"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"PICSERVE_RUN_{name.upper()}: must be a number ≥ 0 (got {value!r})")
        if self.cap and self.floor > self.cap:
            raise ValueError(
                f"PICSERVE_RUN_DEADLINE_FLOOR ({self.floor:g} s) must not exceed PICSERVE_RUN_DEADLINE_CAP "
                f"({self.cap:g} s)"
            )

    @classmethod
    def of(cls, settings: Settings) -> DeadlinePolicy:
        return cls(
            factor=settings.run_deadline_factor,
            floor=settings.run_deadline_floor,
            cap=settings.run_deadline_cap,
            speed=settings.run_speed,
            grace=settings.run_deadline_grace,
        )

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def limit(self, work: float, measured_speed: float | None = None) -> float:
        """Seconds a run of `work` may go without a sign of life (inf: deadlines are off)."""
        if not self.enabled:
            return math.inf
        speed = measured_speed or self.speed
        if not speed:
            return self.cap
        return min(self.cap, max(self.floor, self.factor * work / speed))


@dataclass
class Speedometer:
    """A worker's speed per task kind (work per second), from its finished runs: an exponentially
    weighted mean, so it follows a change (another model, a warmed-up compile) within a few runs."""

    smoothing: float = 0.3
    _speeds: dict[str, float] = field(default_factory=dict)

    def speed(self, kind: str) -> float | None:
        return self._speeds.get(kind)

    def record(self, kind: str, work: float, seconds: float) -> None:
        if work <= 0 or seconds <= 0:
            return
        sample = work / seconds
        known = self._speeds.get(kind)
        self._speeds[kind] = sample if known is None else known + self.smoothing * (sample - known)


class RunHung(Exception):
    """A run gave no sign of life within its limit (`seconds`); `returned`: its engine call stopped
    within the grace after being told to (else the engine thread is stuck); `cancelled`: the job was
    also cancelled meanwhile."""

    def __init__(self, seconds: float, returned: bool, cancelled: bool) -> None:
        super().__init__(f"no sign of life for {round(seconds, 1):g} s")
        self.seconds, self.returned, self.cancelled = seconds, returned, cancelled


class Deadline:
    """One run's deadline: `alive()` (from the engine thread, at each step) moves it on; once
    `expired`, `stop()` makes `stopping` true, which the step callback turns into a stop."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._last = clock()
        self.stopping = False

    def alive(self) -> None:
        self._last = self._clock()

    def remaining(self) -> float | None:
        """Seconds until it expires (None: never)."""
        if math.isinf(self.limit):
            return None
        return max(0.0, self._last + self.limit - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() == 0.0

    def stop(self) -> None:
        self.stopping = True

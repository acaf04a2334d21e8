"""The worker registry (`picserve_workers`): a worker's own row, written by `WorkerRegistry`.

(What the rest of picserve reads of the table — `list_workers`, `prune`, `AGE_OUT`, `lora_key` — is in
tasks/workers.py.)

Every worker process keeps one row, named by its worker name: where it runs (host, pid, device, GPU
model and memory), the main models and LoRAs its engine holds, its counts (tasks run, model loads
since it started), the task it runs, and a heartbeat. It writes the row when it starts, after every
task (what the engine holds then) and every `heartbeat_interval` seconds (the heartbeat alone), and
deletes it on a clean exit. The fetch (routing.py) reads the row to route jobs by model and writes
the task it hands out, with the model the worker is about to load.

A worker silent for `stalled_after` seconds is not live: `picserve workers` leaves it out and the
fetch no longer keeps jobs for its models. A worker whose device broke (a sticky CUDA error: jobs.py)
writes its row as *unhealthy*, with the error and holding nothing (no job waits for it), and exits
without deleting it: `picserve workers` shows it, live or not, until it is aged out or its restart,
under the same name, writes the row anew. The stalled-worker sweep deletes rows silent for
`AGE_OUT` × `stalled_after` (a killed worker never deletes its own). Every write here is best effort:
while the database is away a worker goes on without them (its heartbeat writes the row again, whole,
if it was aged out meanwhile).

LoRAs are named as the engine's adapters are (`engine/lora/files.py`: 'lora_' + the code with non-word
characters as '_'), without the prefix: `lora_key(code)`, which create_task also writes on the task.
Control models (ControlNets) held are listed beside them as `control_key(code)` (`controlnet.<key>`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, LiteralString

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from picserve.domain import Capacity
from picserve.tasks.workers import control_key

__all__ = ["WorkerRegistry", "describe_device"]

log = logging.getLogger(__name__)

_ADAPTER_PREFIX = "lora_"


def _held_loras(names: Sequence[str]) -> list[str]:
    return sorted({name.removeprefix(_ADAPTER_PREFIX) for name in names})


def describe_device(device: str) -> tuple[str, str | None, int | None]:
    """(device, GPU model, GPU memory in bytes) of a worker. The GPU is read through torch, and only
    when the worker's engine has imported it already: a worker with a fake engine never loads torch."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return device, None, None
    try:
        resolved = device
        if device == "auto":
            resolved = "cuda" if torch.cuda.is_available() else "cpu"
        if resolved.startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(resolved))
            return resolved, str(props.name), int(props.total_memory)
        return resolved, None, None
    except Exception:  # a broken driver must not stop the worker from registering
        log.warning("could not read the properties of device %s", device, exc_info=True)
        return device, None, None


_COLUMNS = (
    "name, host, pid, device, gpu, gpu_memory, main_models, loras, model_slots, tasks_done, model_loads, "
    "current_task, started_at, host_models, memory_total, model_memory, model_bytes, host_bytes, dtype, unhealthy"
)
_VALUES = (
    "%(name)s, %(host)s, %(pid)s, %(device)s, %(gpu)s, %(gpu_memory)s, %(main_models)s, %(loras)s, "
    "%(model_slots)s, %(tasks_done)s, %(model_loads)s, %(current_task)s, %(started_at)s, %(host_models)s, "
    "%(memory_total)s, %(model_memory)s, %(model_bytes)s, %(host_bytes)s, %(dtype)s, %(unhealthy)s"
)
#: the whole row, as this process knows it (on start and after every task)
_WRITE = (
    f"INSERT INTO picserve_workers ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (name) DO UPDATE SET "
    "host = EXCLUDED.host, pid = EXCLUDED.pid, device = EXCLUDED.device, gpu = EXCLUDED.gpu, "
    "gpu_memory = EXCLUDED.gpu_memory, main_models = EXCLUDED.main_models, loras = EXCLUDED.loras, "
    "model_slots = EXCLUDED.model_slots, tasks_done = EXCLUDED.tasks_done, model_loads = EXCLUDED.model_loads, "
    "current_task = EXCLUDED.current_task, current_model = NULL, started_at = EXCLUDED.started_at, "
    "host_models = EXCLUDED.host_models, memory_total = EXCLUDED.memory_total, model_memory = EXCLUDED.model_memory, "
    "model_bytes = EXCLUDED.model_bytes, host_bytes = EXCLUDED.host_bytes, dtype = EXCLUDED.dtype, "
    "unhealthy = EXCLUDED.unhealthy, last_heartbeat = now()"
)
#: the heartbeat alone (the fetch writes the row's current task and holdings in between); the whole
#: row when it is missing (aged out during a long outage)
_BEAT = (
    f"INSERT INTO picserve_workers ({_COLUMNS}) VALUES ({_VALUES}) "
    "ON CONFLICT (name) DO UPDATE SET last_heartbeat = now()"
)


class WorkerRegistry:
    """One worker's row in the registry, on `pool`; its counts kept in this process.

    Its engine's `Capacity` (after every task) gives `model_slots`, the main models its device keeps
    at once (PICSERVE_MAX_LOADED_MODELS, or what PICSERVE_MODEL_MEMORY holds of the models it loaded),
    which the fetch uses to predict what taking a task of another model evicts, and its memory.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        name: str,
        device: str,
        model_slots: int = 1,
        gpu: str | None = None,
        gpu_memory: int | None = None,
    ) -> None:
        self.pool = pool
        self.name = name
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.device = device
        self.gpu = gpu
        self.gpu_memory = gpu_memory
        self.model_slots = model_slots
        self.started_at = datetime.now(UTC)
        self.main_models: list[str] = []
        self.loras: list[str] = []
        self.tasks_done = 0
        self.model_loads = 0
        self.current_task: str | None = None
        self.host_models: list[str] = []
        self.capacity = Capacity(model_slots=model_slots)
        #: None: healthy; else why the worker stopped taking tasks
        self.unhealthy: str | None = None

    async def register(self, holdings: Mapping[str, Sequence[str]], capacity: Capacity | None = None) -> None:
        """The worker starts: its whole row, with what its engine holds (often nothing yet)."""
        self._hold(holdings, capacity)
        self.started_at = datetime.now(UTC)
        await self._run("registering", _WRITE, self._row())

    def job_started(self, task_uid: str) -> None:
        """The worker runs `task_uid` now (the fetch wrote it to the row already)."""
        self.current_task = task_uid

    async def job_done(
        self, model_code: str | None, holdings: Mapping[str, Sequence[str]], capacity: Capacity | None = None
    ) -> None:
        """The worker's job ended: what its engine holds now, and its counts. `model_code`: the main
        model of the task it ran (None when it skipped the job): a load is counted when that model was
        not held before the task and is now."""
        before = set(self.main_models)
        self._hold(holdings, capacity)
        if model_code is not None:
            self.tasks_done += 1
            if model_code not in before and model_code in self.main_models:
                self.model_loads += 1
        self.current_task = None
        await self._run("writing", _WRITE, self._row())

    async def mark_unhealthy(self, reason: str) -> None:
        """The worker's device broke (`reason`: the error in words): it takes no more tasks. Its row says
        so and holds nothing, so that the fetch keeps no job for it; the row stays after it exits."""
        self.unhealthy = reason
        self.current_task = None
        self.main_models, self.loras, self.host_models = [], [], []
        self.capacity = replace(self.capacity, model_bytes=0, host_bytes=0)
        await self._run("marking unhealthy", _WRITE, self._row())

    async def heartbeat(self) -> None:
        await self._run("heartbeat", _BEAT, self._row())

    async def unregister(self) -> None:
        """The worker exits cleanly: its row goes."""
        await self._run("unregistering", "DELETE FROM picserve_workers WHERE name = %(name)s", {"name": self.name})

    def _hold(self, holdings: Mapping[str, Sequence[str]], capacity: Capacity | None) -> None:
        self.main_models = list(dict.fromkeys(holdings.get("main", ())))
        # LoRAs and control models: what the fetch's affinity matches a task's `loras` against
        self.loras = _held_loras(holdings.get("lora", ())) + [control_key(c) for c in holdings.get("controlnet", ())]
        self.host_models = list(dict.fromkeys(holdings.get("host", ())))
        if capacity is not None:
            self.capacity = capacity
            self.model_slots = capacity.model_slots

    def _row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "device": self.device,
            "gpu": self.gpu,
            "gpu_memory": self.gpu_memory,
            "main_models": self.main_models,
            "loras": self.loras,
            "model_slots": self.model_slots,
            "tasks_done": self.tasks_done,
            "model_loads": self.model_loads,
            "current_task": self.current_task,
            "started_at": self.started_at,
            "host_models": self.host_models,
            "memory_total": self.capacity.device_total,
            "model_memory": self.capacity.model_budget,
            "model_bytes": self.capacity.model_bytes,
            "host_bytes": self.capacity.host_bytes,
            "dtype": self.capacity.dtype,
            "unhealthy": self.unhealthy,
        }

    async def _run(self, what: str, query: LiteralString, params: Mapping[str, Any]) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute(query, params)
        except Exception as exc:  # best effort: the database may be away; the next write catches up
            log.warning("worker %s: registry %s failed (%s)", self.name, what, exc)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with self.pool.connection() as conn:
            yield conn

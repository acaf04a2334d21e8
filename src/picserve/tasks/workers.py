"""The worker registry's table (`picserve_workers`), as the rest of picserve reads it.

Every worker process keeps one row (worker/registry.py writes it): where it runs, what its engine
holds, its counts, the task it runs and a heartbeat. Here is what is read of it outside the worker:
`list_workers` (`picserve workers`, the admission check's worker memory), `prune` (the stalled-worker
sweep deletes rows silent for `AGE_OUT` × `stalled_after`: a killed worker never deletes its own),
and the names the fetch routes LoRAs by (`lora_key`), which create_task also writes on the task.

LoRAs are named as the engine's adapters are ('lora_' + the code with non-word characters as '_'),
without the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["AGE_OUT", "WorkerInfo", "affinity_keys", "control_key", "list_workers", "lora_key", "lora_keys", "prune"]


#: a worker silent for this many times `stalled_after` is deleted from the registry by the sweep
AGE_OUT = 10


def lora_key(code: str) -> str:
    """A LoRA's ModelCode as the registry and the fetch name it: the engine's adapter name, unprefixed."""
    return re.sub(r"\W", "_", code)


def lora_keys(codes: Sequence[str]) -> list[str]:
    """`lora_key` of each, sorted and distinct: a task's LoRA set."""
    return sorted({lora_key(code) for code in codes})


def control_key(code: str) -> str:
    """A control model's ModelCode as the registry and the fetch name it, beside the LoRAs: `lora_key`
    never holds a dot, so `controlnet.<key>` names no LoRA."""
    return f"controlnet.{lora_key(code)}"


def affinity_keys(loras: Sequence[str], controls: Sequence[str]) -> list[str]:
    """A task's sub-model set for the fetch's affinity: its LoRAs and its control models, sorted."""
    return sorted({*lora_keys(loras), *(control_key(code) for code in controls)})


@dataclass(frozen=True)
class WorkerInfo:
    """One row of the registry, as `picserve workers` shows it."""

    name: str
    host: str
    pid: int
    device: str
    gpu: str | None
    gpu_memory: int | None
    main_models: tuple[str, ...]
    loras: tuple[str, ...]
    tasks_done: int
    model_loads: int
    current_task: str | None
    current_model: str | None
    started_at: datetime
    last_heartbeat: datetime
    #: heard from within `stalled_after` seconds
    live: bool
    #: main models in its RAM tier (off the device)
    host_models: tuple[str, ...] = ()
    #: the device's whole memory (a CPU worker's: the RAM), bytes; None: not reported
    memory_total: int | None = None
    #: bytes of main-model weights it keeps on the device; None: unbounded
    model_memory: int | None = None
    model_bytes: int = 0
    host_bytes: int = 0
    #: the compute dtype of its engine ("float16", …); None: not reported
    dtype: str | None = None
    #: None: healthy; else why it stopped taking tasks (its device's error)
    unhealthy: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WorkerInfo:
        return cls(
            name=row["name"],
            host=row["host"],
            pid=row["pid"],
            device=row["device"],
            gpu=row["gpu"],
            gpu_memory=row["gpu_memory"],
            main_models=tuple(row["main_models"]),
            loras=tuple(row["loras"]),
            tasks_done=row["tasks_done"],
            model_loads=row["model_loads"],
            current_task=row["current_task"],
            current_model=row["current_model"],
            started_at=row["started_at"],
            last_heartbeat=row["last_heartbeat"],
            live=row["live"],
            host_models=tuple(row["host_models"]),
            memory_total=row["memory_total"],
            model_memory=row["model_memory"],
            model_bytes=row["model_bytes"],
            host_bytes=row["host_bytes"],
            dtype=row["dtype"],
            unhealthy=row["unhealthy"],
        )

    def to_json(self) -> dict[str, Any]:
        """The row in the CLI's JSON form (PascalCase like the rest of its output, times in ISO 8601)."""
        return {
            "Name": self.name,
            "Host": self.host,
            "Pid": self.pid,
            "Device": self.device,
            "GPU": self.gpu,
            "GPUMemory": self.gpu_memory,
            "Models": list(self.main_models),
            "Loras": list(self.loras),
            "TasksDone": self.tasks_done,
            "ModelLoads": self.model_loads,
            "CurrentTask": self.current_task,
            "CurrentModel": self.current_model,
            "StartedAt": self.started_at.isoformat(),
            "LastHeartbeat": self.last_heartbeat.isoformat(),
            "Live": self.live,
            "HostModels": list(self.host_models),
            "MemoryTotal": self.memory_total,
            "ModelMemory": self.model_memory,
            "ModelBytes": self.model_bytes,
            "HostBytes": self.host_bytes,
            "Dtype": self.dtype,
            "Unhealthy": self.unhealthy,
        }


async def list_workers(conn: AsyncConnection[Any], live_after: float, everyone: bool = False) -> list[WorkerInfo]:
    """The registry's workers by name: the live ones (heard from within `live_after` seconds) and the
    unhealthy ones, or with `everyone` the silent ones too (not yet aged out)."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT *, last_heartbeat > now() - make_interval(secs => %(live_after)s) AS live FROM picserve_workers "
        "WHERE %(everyone)s OR last_heartbeat > now() - make_interval(secs => %(live_after)s) "
        "OR unhealthy IS NOT NULL ORDER BY name",
        {"live_after": live_after, "everyone": everyone},
    )
    return [WorkerInfo.from_row(row) for row in await cur.fetchall()]


async def prune(conn: AsyncConnection[Any], older_than: float) -> list[str]:
    """Delete the workers silent for `older_than` seconds; their names."""
    cur = await conn.execute(
        "DELETE FROM picserve_workers WHERE last_heartbeat < now() - make_interval(secs => %s) RETURNING name",
        (older_than,),
    )
    return [str(row[0]) for row in await cur.fetchall()]

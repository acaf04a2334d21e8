"""The device a worker runs on: its whole and free memory, and making it the thread's current CUDA
device. Used by the engine and its pipelines alike (engine.py re-exports the names)."""

from __future__ import annotations

import contextlib
from typing import Any

import psutil
import torch

from picserve import admission

__all__ = ["device_memory", "free_device_memory", "on_device"]


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`device` as the calling thread's current CUDA device for the block: what takes the default device
    (torch.compile's graphs, CUDA graphs, the allocator of a library that asks for "cuda") lands there, not
    on GPU 0 beside another worker's. Nothing on a CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def device_memory(device: torch.device) -> int:
    """The device's whole memory in bytes: the GPU's, or for the CPU the RAM this process may use (a
    container's memory limit where lower than the machine's RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return admission.usable_memory(int(psutil.virtual_memory().total))


def free_device_memory(device: torch.device) -> int:
    """Bytes a generation can still allocate on the device: on CUDA what the driver has free plus what
    torch's allocator holds unused; on the CPU what the OS reports available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return int(psutil.virtual_memory().available)

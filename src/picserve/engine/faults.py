"""A device that no longer works: the sticky CUDA errors, after which a process cannot use its GPU again.

Most failures of a generation are the task's (a bad input, running out of memory: `memory.py`), and
the worker goes on with the next task. A *sticky* error is the device's: an illegal memory access, a
device-side assert, an uncorrectable ECC or NVLink error (what the driver logs as an Xid), an
unspecified launch failure. CUDA then refuses every later call of the process's context, so every
task that worker takes would fail at once: it must stop and be started again (worker/jobs.py requeues
the task, marks the worker unhealthy and stops it). No torch here: a worker with a fake engine never
loads it, and no torch error can have been raised where it is not loaded.

torch raises these as `torch.AcceleratorError` (a RuntimeError; torch ≥ 2.8, with the cudaError_t in
`error_code`) or, older and from some kernels, as a RuntimeError whose message starts "CUDA error: "
(ROCm: "HIP error: "). They are recognised by that code or by CUDA's own words for it. Running out of
memory ("CUDA error: out of memory", also an AcceleratorError) is not sticky.
"""

from __future__ import annotations

import sys

from picserve.engine.memory import chain, is_out_of_memory

__all__ = ["broken_device_error", "describe", "is_broken_device"]

#: cudaError_t codes that leave the context unusable (CUDA runtime API, "cudaError_t"): ECC
#: uncorrectable, NVLink uncorrectable, illegal address, launch timeout, context destroyed, assert,
#: hardware stack error, illegal instruction, misaligned address, invalid address space, invalid PC,
#: launch failure, unknown
_STICKY_CODES = frozenset({214, 220, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719, 999})

#: CUDA's descriptions of those codes (cudaGetErrorString), as they appear in torch's messages
_STICKY_WORDS = (
    "uncorrectable ecc error",
    "uncorrectable nvlink error",
    "illegal memory access",
    "launch timed out and was terminated",
    "context is destroyed",
    "device-side assert",
    "hardware stack error",
    "illegal instruction was encountered",
    "misaligned address",
    "operation not supported on global/shared address space",
    "invalid program counter",
    "unspecified launch failure",
    "cuda error: unknown error",
    "hip error: unknown error",
    "cuda driver error: unknown error",
)


def broken_device_error(exc: BaseException) -> BaseException | None:
    """The sticky device error in `exc` or the exceptions it was raised from or while handling
    (`__cause__`, `__context__`); None when there is none."""
    return next((link for link in chain(exc) if _sticky(link)), None)


def is_broken_device(exc: BaseException) -> bool:
    """Whether `exc` says the device is unusable for the rest of this process (a sticky CUDA error)."""
    return broken_device_error(exc) is not None


def describe(exc: BaseException) -> str:
    """The sticky error of `exc` (or `exc`) in one line: `AcceleratorError: CUDA error: an illegal …`."""
    error = broken_device_error(exc) or exc
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _sticky(exc: BaseException) -> bool:
    if not isinstance(exc, RuntimeError) or is_out_of_memory(exc):
        return False
    torch = sys.modules.get("torch")  # no torch loaded: no torch error can have been raised
    accelerator = getattr(torch, "AcceleratorError", None) if torch is not None else None
    if accelerator is not None and isinstance(exc, accelerator) and getattr(exc, "error_code", None) in _STICKY_CODES:
        return True
    message = str(exc).lower()
    return any(words in message for words in _STICKY_WORDS)

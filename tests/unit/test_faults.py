"""Which errors say the device is broken for good (engine/faults.py): the sticky CUDA errors only."""

from __future__ import annotations

import sys
import types

import pytest

from picserve import errors
from picserve.engine.faults import broken_device_error, describe, is_broken_device

KERNEL_NOTE = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
    "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)

STICKY = [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered",
    "CUDA error: uncorrectable ECC error encountered",
    "CUDA error: unspecified launch failure",
    "CUDA error: misaligned address",
    "CUDA error: an illegal instruction was encountered",
    "CUDA error: the launch timed out and was terminated",
    "CUDA error: uncorrectable NVLink error detected during the execution",
    "CUDA error: unknown error",
    "HIP error: an illegal memory access was encountered",
]


@pytest.mark.parametrize("message", STICKY)
def test_sticky_cuda_errors_are_recognised(message: str) -> None:
    assert is_broken_device(RuntimeError(message + KERNEL_NOTE))
    assert describe(RuntimeError(message + KERNEL_NOTE)) == f"RuntimeError: {message}"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)"),
        RuntimeError("CUDA error: out of memory" + KERNEL_NOTE),
        RuntimeError("CUDA error: invalid configuration argument"),  # a request too big for a kernel: the task's
        MemoryError(),
        ValueError("an illegal memory access was encountered"),  # not a runtime error of torch's
        RuntimeError("Expected all tensors to be on the same device"),
        errors.PicserveError(),
        errors.OutOfMemory("the GPU ran out of memory generating a 4096×4096 image"),
    ],
)
def test_other_errors_are_not(error: BaseException) -> None:
    assert not is_broken_device(error)


def test_the_chain_is_walked() -> None:
    sticky = RuntimeError("CUDA error: device-side assert triggered")
    caused = errors.ModelLoadError("could not load model-x")
    caused.__cause__ = sticky
    assert broken_device_error(caused) is sticky
    assert describe(caused) == "RuntimeError: CUDA error: device-side assert triggered"
    during = KeyError("x")
    during.__context__ = sticky
    assert is_broken_device(during)
    loop = RuntimeError("no")  # a cycle ends the walk
    loop.__context__ = ValueError("again")
    loop.__context__.__context__ = loop
    assert not is_broken_device(loop)


def test_an_out_of_memory_while_handling_a_sticky_error_is_sticky() -> None:
    oom = RuntimeError("CUDA error: out of memory")
    oom.__context__ = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert is_broken_device(oom)


class _AcceleratorError(RuntimeError):
    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


def test_an_accelerator_error_by_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's AcceleratorError carries the cudaError_t: a code is enough, whatever the words
    fake_torch = types.SimpleNamespace(
        AcceleratorError=_AcceleratorError, OutOfMemoryError=type("OOM", (Exception,), {})
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert is_broken_device(_AcceleratorError("CUDA error: an unfamiliar phrasing", error_code=719))
    assert is_broken_device(_AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert not is_broken_device(_AcceleratorError("CUDA error: out of memory", error_code=2))
    assert not is_broken_device(_AcceleratorError("CUDA error: invalid argument", error_code=1))


@pytest.mark.models  # imports torch
def test_torch_accelerator_error() -> None:
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "AcceleratorError"):
        pytest.skip("this torch has no AcceleratorError")
    assert is_broken_device(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert not is_broken_device(torch.AcceleratorError("CUDA error: out of memory"))
    assert not is_broken_device(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))

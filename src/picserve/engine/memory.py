"""Running out of device memory: a batch denoised in chunks, one retry one image at a time, then an error
that says what to lower. No torch here: `fake.FakeEngine` runs the same policy.

What the established UIs do (from memory of their behaviour, not checked against their current code):
ComfyUI frees what it can (idle models, the allocator's cache) and retries a VAE decode in tiles when it
runs out of memory; InvokeAI's model cache unloads models to make room before it loads another; A1111
reports the error to the user. Here the part of a request that grows with it is the batch: a batch
whose chunk of several images runs out of memory is retried once, from that chunk on, one image at a
time, after memory was freed. Image i still comes from seed + i, so the images are those of a run that
went one at a time from the start. Out of memory once more, or for a chunk that was one image already,
the run gives up with `errors.OutOfMemory`, naming the size and count so the client knows what to lower.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from picserve import domain, errors

__all__ = ["ChunkRunner", "as_error", "chain", "is_out_of_memory", "release", "run_in_chunks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: denoises one chunk: its seeds, and a callback taking the fraction (0..1] of the chunk's steps done
ChunkRunner = Callable[[list[int], Callable[[float], None]], list[T]]

# What allocators say when they fail: torch's CUDA ("CUDA out of memory", "CUDA error: out of memory"),
# MPS ("MPS backend out of memory") and CPU ("DefaultCPUAllocator: can't allocate memory",
# "DefaultCPUAllocator: not enough memory") allocators raise RuntimeErrors with these words.
_ALLOCATOR_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device or host allocation failure: torch.OutOfMemoryError, a torch allocator's
    RuntimeError, or MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # no torch loaded: no torch error can have been raised
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc) for words in _ALLOCATOR_MESSAGES)


class _StillOutOfMemory(MemoryError):
    """A batch ran out of memory again after it was split to one image at a time."""


def run_in_chunks(
    seeds: list[int],
    max_chunk: int,
    run_chunk: ChunkRunner[T],
    on_step: Callable[[float], None],
    free_memory: Callable[[], object],
) -> list[T]:
    """`run_chunk` over `seeds` in chunks of at most `max_chunk`, in order; the images of every chunk.

    `on_step` gets the whole batch's progress: once before each chunk, then after each of its steps.
    A chunk of more than one image that runs out of memory is retried, once, one image at a time,
    together with every chunk after it (after `free_memory`). The progress never goes back: during the
    retry it stays where it was until the retry passes it. Any other failure, or running out of memory
    again, is raised.
    """
    size = max(1, max_chunk)
    chunks = [seeds[i : i + size] for i in range(0, len(seeds), size)]
    results: list[T] = []
    start, span = 0.0, 1.0  # the part of the progress bar the chunks in `chunks` share
    split = False
    index = 0
    reached = 0.0

    def report(progress: float) -> None:
        nonlocal reached
        reached = max(reached, progress)
        on_step(reached)  # called every time: it is also where a cancel stops the run

    while index < len(chunks):
        chunk = chunks[index]
        low, width = start + span * index / len(chunks), span / len(chunks)
        report(low)  # before each chunk: a cancel stops before more work

        def on_chunk_step(done: float, low: float = low, width: float = width) -> None:
            report(low + width * done)

        try:
            results.extend(run_chunk(chunk, on_chunk_step))
            index += 1
            continue
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if split:
                raise _StillOutOfMemory(str(exc)) from exc
            if len(chunk) == 1:
                raise
            log.warning("out of memory denoising %d images at once (%s); retrying one at a time", len(chunk), exc)
        # Out of the except block, the failed chunk's tensors are no longer held by its traceback.
        free_memory()
        rest = [seed for later in chunks[index:] for seed in later]
        chunks, index, split = [[seed] for seed in rest], 0, True
        start, span = low, start + span - low
    return results


def release(exc: BaseException, free_memory: Callable[[], object]) -> None:
    """Let go of the tensors that the frames of `exc`'s traceback still hold, then `free_memory`.

    The traceback stays printable (file, line, code); only the frames' local variables are dropped.
    """
    for link in chain(exc):
        traceback.clear_frames(link.__traceback__)
    free_memory()


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then the exceptions it was raised from or while handling (`__cause__`, else `__context__`),
    each once."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


@contextlib.contextmanager
def as_error(spec: domain.GenerationSpec, device_type: str, free_memory: Callable[[], object]) -> Iterator[None]:
    """Running out of memory inside the block becomes `errors.OutOfMemory`, after memory was freed.

    The message names the request's size and image count and what to lower, e.g. "the GPU ran out of
    memory generating 4 images of 1536×1536, even one image at a time; lower Width/Height or
    BatchSize, or retry later".
    """
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release(exc, free_memory)
        raise errors.OutOfMemory(_message(spec, device_type, isinstance(exc, _StillOutOfMemory))) from exc


@contextlib.contextmanager
def tool_run(device: Any, doing: str, free_memory: Callable[[], object]) -> Iterator[None]:
    """An image tool's run (a face restored, a region erased, an image segmented): running out of memory
    inside the block becomes `errors.OutOfMemory` "<the GPU | this worker> ran out of memory <doing>",
    after the traceback's tensors and the allocator's cache were let go."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release(exc, free_memory)
        where = "the GPU" if getattr(device, "type", device) == "cuda" else "this worker"
        raise errors.OutOfMemory(f"{where} ran out of memory {doing}") from None


def _message(spec: domain.GenerationSpec, device_type: str, one_at_a_time: bool) -> str:
    device = {"cuda": "the GPU", "cpu": "the server"}.get(device_type, f"the {device_type} device")
    if spec.batch_size == 1:
        what = f"a {spec.width}×{spec.height} image"
    else:
        what = f"{spec.batch_size} images of {spec.width}×{spec.height}"
        if one_at_a_time:
            what += ", even one image at a time"
    return f"{device} ran out of memory generating {what}; lower Width/Height or BatchSize, or retry later"

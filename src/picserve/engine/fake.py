"""FakeEngine: the `GenerationEngine` protocol without torch, for tests of the API and the worker.

It honours what the worker relies on: one `on_step` call per step (so cancellation stops it at the
next step), images of the requested size and count, image i from seed + i (the same seed gives the
same pixels), and A1111 `parameters` text. Its pixels are seeded noise, not a picture.

It can also run out of memory the way a device does: give it `memory_pixels` and a chunk of the batch
needing more (width × height × images) raises MemoryError when it starts. The batch then goes through
the engine's own policy (memory.run_in_chunks: chunks of `max_chunk`, one retry one image at a time)
and ends, as the real engine's does, in images or in `errors.OutOfMemory`.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from picserve import domain
from picserve.engine import memory, png
from picserve.engine.base import Capacity, Generated, PreviewCallback, StepCallback

__all__ = ["FakeEngine"]


class FakeEngine:
    """Seeded noise images; `step_seconds` makes each step take that long (to test cancel and progress).

    `max_chunk`: images denoised together (None: the whole batch at once). `memory_pixels`: the output
    pixels a simulated GPU holds at once (None: unlimited); a chunk needing more runs out of memory.
    """

    def __init__(self, step_seconds: float = 0.0, max_chunk: int | None = None, memory_pixels: int | None = None):
        self.step_seconds = step_seconds
        self.max_chunk = max_chunk
        self.memory_pixels = memory_pixels
        #: every spec it was asked to generate, in order
        self.calls: list[domain.GenerationSpec] = []
        #: the seeds of every chunk it started denoising, in order (those that ran out of memory too)
        self.chunks: list[list[int]] = []
        self._loaded: list[str] = []

    def holdings(self) -> dict[str, list[str]]:
        return {"main": list(self._loaded), "lora": [], "host": []}

    def capacity(self) -> Capacity:
        return Capacity(dtype="float32")

    def preload(self, codes: list[str]) -> None:
        self._loaded = list(codes[-1:])

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        self.calls.append(spec)
        self._loaded = [spec.model_code]

        def denoise(seeds: list[int], on_chunk_step: Callable[[float], None]) -> list[Image.Image]:
            self.chunks.append(seeds)
            needed = len(seeds) * spec.width * spec.height
            if self.memory_pixels is not None and needed > self.memory_pixels:
                raise MemoryError(f"fake GPU: {needed} pixels do not fit in {self.memory_pixels}")
            for step in range(spec.steps):
                if self.step_seconds:
                    time.sleep(self.step_seconds)
                on_chunk_step((step + 1) / spec.steps)
                if on_preview is not None:
                    on_preview(functools.partial(_flat_preview, spec, (step + 1) / spec.steps))
            return [_noise(seed, spec.width, spec.height) for seed in seeds]

        with memory.as_error(spec, "cuda", gc.collect):
            images = memory.run_in_chunks(
                spec.seeds, self.max_chunk or spec.batch_size, denoise, on_step or _no_progress, gc.collect
            )
        fields = {"Steps": spec.steps, "Size": f"{spec.width}x{spec.height}", "Model": spec.model_code}
        texts = [png.infotext(spec.prompt, spec.negative_prompt, {**fields, "Seed": seed}) for seed in spec.seeds]
        return Generated(images=images, seeds=spec.seeds, infotexts=texts)


def _flat_preview(spec: domain.GenerationSpec, progress: float) -> Image.Image:
    """A preview an eighth of the image's size, grey as light as the progress."""
    level = round(255 * progress)
    return Image.new("RGB", (max(1, spec.width // 8), max(1, spec.height // 8)), (level, level, level))


def _no_progress(progress: float) -> None:
    """The step callback when the caller passes none."""


def _noise(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")

"""FakeEngine: the `GenerationEngine` protocol without torch, for tests of the API and the worker.

It honours what the worker relies on: one `on_step` call per step (so cancellation stops it at the
next step), images of the requested size and count, image i from seed + i (the same seed gives the
same pixels), and A1111 `parameters` text. Its pixels are seeded noise, not a picture.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from picserve import domain
from picserve.engine import png
from picserve.engine.base import Generated, StepCallback

__all__ = ["FakeEngine"]


class FakeEngine:
    """Seeded noise images; `step_seconds` makes each step take that long (to test cancel and progress)."""

    def __init__(self, step_seconds: float = 0.0):
        self.step_seconds = step_seconds
        #: every spec it was asked to generate, in order
        self.calls: list[domain.GenerationSpec] = []
        self._loaded: list[str] = []

    def holdings(self) -> dict[str, list[str]]:
        return {"main": list(self._loaded), "lora": []}

    def generate(self, spec: domain.GenerationSpec, on_step: StepCallback | None = None) -> Generated:
        self.calls.append(spec)
        self._loaded = [spec.model_code]
        for step in range(spec.steps):
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_step is not None:
                on_step((step + 1) / spec.steps)
        images = [_noise(seed, spec.width, spec.height) for seed in spec.seeds]
        fields = {"Steps": spec.steps, "Size": f"{spec.width}x{spec.height}", "Model": spec.model_code}
        texts = [png.infotext(spec.prompt, spec.negative_prompt, {**fields, "Seed": seed}) for seed in spec.seeds]
        return Generated(images=images, seeds=spec.seeds, infotexts=texts)


def _noise(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")

"""Previews from the real pipeline's latents: one per step, an eighth of the size, output unchanged."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from picserve import domain
from picserve.engine import previews, tiny


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_the_engine_offers_a_preview_each_step_without_changing_the_image(engine, report):
    spec = domain.GenerationSpec(model_code=tiny.TINY_CODE, prompt="a lighthouse", width=96, height=64, steps=5, seed=3)
    plain = np.asarray(engine.generate(spec).images[0])
    made: list = []
    costs: list[float] = []

    def on_preview(make) -> None:
        start = time.perf_counter()
        made.append(make())
        costs.append(time.perf_counter() - start)

    started = time.perf_counter()
    with_previews = np.asarray(engine.generate(spec, on_preview=on_preview).images[0])
    elapsed = time.perf_counter() - started
    assert np.array_equal(with_previews, plain)  # a preview reads the latents, never changes them
    assert len(made) == 5 and {image.size for image in made} == {(12, 8)}
    assert len({image.tobytes() for image in made}) > 1  # it changes as the steps go
    report(
        f"previews: {len(made)} made, {1000 * sum(costs) / len(costs):.2f} ms each, "
        f"{100 * sum(costs) / elapsed:.1f}% of a 5-step 96×64 generation (one per step, unthrottled)"
    )


def test_latents_map_to_colours_with_sdxl_factors():
    flat = previews.latents_to_image(torch.zeros(1, 4, 16, 24))
    assert flat.size == (24, 16)
    assert flat.getpixel((0, 0)) == (141, 125, 127)  # the bias alone: a neutral grey
    first_channel = torch.zeros(4, 2, 2)
    first_channel[0] = 1.0  # SDXL's first latent channel is mostly luminance
    r, g, b = previews.latents_to_image(first_channel).getpixel((0, 0))
    assert min(r, g, b) > 170

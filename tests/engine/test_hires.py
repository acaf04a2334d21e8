"""Hires fix on the tiny SDXL: exactly Width×Height, deterministic by seed, equal to its two passes run by
hand through diffusers' pipelines (latent and Lanczos upscales), with an upscaler model, LoRAs and
tiling; progress runs over both passes and a cancel stops between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from picserve import domain, errors
from picserve.engine import prompts, samplers, tiny

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 96, "height": 80, "steps": 5, "seed": 11}


def spec(upscaler: str = "Latent", **fields) -> domain.GenerationSpec:
    hires = domain.Hires(48, 40, upscaler, steps=4, strength=0.6)
    return domain.GenerationSpec(**{**BASE, "hires": hires, **fields})


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def by_hand(engine, upscaler: str, seed: int) -> Image.Image:
    """The two passes through diffusers' SDXL text-to-image and image-to-image pipelines."""
    model = engine.pipelines.get(tiny.TINY_CODE)
    first = model.pipeline("txt2img")
    first.scheduler = samplers.make_scheduler("Euler", model.scheduler_config, seed)
    with torch.inference_mode():
        cond = prompts.encode(first, BASE["prompt"], "", 1, True)
        embeds = {
            "prompt_embeds": cond.embeds,
            "pooled_prompt_embeds": cond.pooled,
            "negative_prompt_embeds": cond.negative_embeds,
            "negative_pooled_prompt_embeds": cond.negative_pooled,
        }
        made = first(
            **embeds,
            width=48,
            height=40,
            num_inference_steps=BASE["steps"],
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent" if upscaler == "Latent" else "pil",
        ).images
        if upscaler == "Latent":
            image = F.interpolate(made, size=(80 // 8, 96 // 8), mode="bilinear", align_corners=False)
        else:
            image = made[0].resize((96, 80), Image.Resampling.LANCZOS)
        second = model.pipeline("img2img")
        second.scheduler = samplers.make_scheduler("Euler", model.scheduler_config, seed)
        out: Image.Image = second(
            **embeds,
            image=image,
            strength=0.6,
            num_inference_steps=4,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
    return out


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_equals_its_two_passes_by_hand(engine, upscaler):
    ours = engine.generate(spec(upscaler, batch_size=2))
    assert [i.size for i in ours.images] == [(96, 80), (96, 80)]
    assert ours.seeds == [11, 12]
    for image, seed in zip(ours.images, ours.seeds, strict=True):
        theirs = by_hand(engine, upscaler, seed)
        assert np.abs(arr(image) - arr(theirs)).max() <= 1
    again = engine.generate(spec(upscaler, batch_size=2))
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(ours.images, again.images, strict=True))
    text = ours.infotexts[0]
    assert f"Hires upscaler: {upscaler}" in text and "First pass size: 48x40" in text and "Size: 96x80" in text


def test_an_upscaler_model_serves_the_hires_fix_and_changes_the_image(engine):
    modelled = engine.generate(spec("4x-tiny-compact"))
    assert modelled.images[0].size == (96, 80)
    assert not np.array_equal(arr(modelled.images[0]), arr(engine.generate(spec("Lanczos")).images[0]))


def test_hires_with_loras_and_tiling_differs_from_one_pass(engine):
    lora = (domain.SubModel("lora", "kohya-0", 0.8),)
    fixed = engine.generate(spec(sub_models=lora, tiling=True))
    one_pass = engine.generate(domain.GenerationSpec(**BASE, sub_models=lora, tiling=True))
    assert fixed.images[0].size == one_pass.images[0].size == (96, 80)
    assert not np.array_equal(arr(fixed.images[0]), arr(one_pass.images[0]))
    assert "LoRA: kohya-0:0.8" in fixed.infotexts[0]


def test_progress_runs_over_both_passes_and_a_cancel_stops_between_them(engine):
    seen: list[float] = []
    previews: list[object] = []
    engine.generate(spec(), seen.append, previews.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    first_share = 48 * 40 * 5 / (48 * 40 * 5 + 96 * 80 * 2)  # pixels × steps run, of each pass
    assert any(0 < p < first_share for p in seen) and any(first_share < p < 1 for p in seen)
    assert len(previews) >= 5 + 2  # a preview per step of both passes

    class Stop(Exception):
        pass

    calls: list[float] = []

    def cancel_in_second_pass(progress: float) -> None:
        calls.append(progress)
        if progress >= first_share:
            raise Stop

    with pytest.raises(Stop):
        engine.generate(spec(), cancel_in_second_pass)
    assert calls[-1] == pytest.approx(first_share)  # stopped where the second pass begins


def test_first_pass_size_rule_and_the_plan_of_the_work():
    from picserve.specs.generation import first_pass_size, largest_pass

    assert first_pass_size(2048, 2048) == (1024, 1024)  # SDXL's native area, same aspect ratio
    assert first_pass_size(2560, 1440) == (1368, 768)
    assert first_pass_size(1024, 1024) == (512, 512)  # no larger than native: half (A1111's scale 2)
    assert first_pass_size(96, 80) == (64, 64)  # at least 64 a side
    fixed = spec()
    assert largest_pass(fixed) == (96, 80)  # the second pass: what admission sizes
    assert fixed.work() == (48 * 40 * 5 + 96 * 80 * int(4 * 0.6)) * 1
    stored = domain.spec_from_json("generation", domain.GenerationSpec.version, fixed.to_dict())
    assert stored == fixed


def test_a_hires_fix_of_non_finite_latents_says_so(engine, monkeypatch):
    from picserve.engine import precision

    real = precision.check_finite

    def poisoned(pipe, latents, what):
        real(pipe, latents * float("nan"), what)

    monkeypatch.setattr(precision, "check_finite", poisoned)
    with pytest.raises(errors.NonFiniteImage, match="48×40"):
        engine.generate(spec())

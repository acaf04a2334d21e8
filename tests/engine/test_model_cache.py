"""The main-model cache in two byte-bounded tiers (engine/loader.py), preload, and the memory plan of a
generation (admission.plan), on the tiny SDXL."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from picserve import admission, catalog, domain
from picserve.engine import engine as engine_module
from picserve.engine import loader, memory, tiling, tiny
from picserve.engine.engine import Engine
from tests.engine.dtypes import pixel_tolerance
from tests.engine.test_modes import b64

A = tiny.TINY_CODE  # the single file
B = f"{tiny.TINY_CODE}-diffusers"  # the same weights as a diffusers folder: another model to the cache
C = tiny.TINY_INPAINT_CODE
SPEC = {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 2, "seed": 11}
LORA = (domain.SubModel(kind="lora", code="kohya-1", weight=0.8),)


def pixels(generated):
    return np.stack([np.asarray(image, dtype=np.int16) for image in generated.images])


@pytest.fixture(scope="module")
def model_bytes(models_dir, config_cache):
    """The bytes the tiny model takes loaded on the CPU (fp32), measured once."""
    probe = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache)
    probe.generate(domain.GenerationSpec(model_code=A, **SPEC))
    return probe.pipelines.models()[0].nbytes


def make(models_dir, config_cache, **options):
    return Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, **options)


def test_a_models_bytes_are_its_weights_and_the_estimate_from_its_file_matches(models_dir, model_bytes):
    estimate = admission.model_bytes(models_dir / "main" / f"{A}.safetensors", 4)
    folder = admission.model_bytes(models_dir / "main" / B, 4)
    assert model_bytes > 0
    # the file holds the same tensors the pipeline does (fp32 here); buffers such as position ids aside
    assert abs(estimate - model_bytes) / model_bytes < 0.02, (estimate, model_bytes)
    assert abs(folder - model_bytes) / model_bytes < 0.02, (folder, model_bytes)


def test_the_device_tier_is_bounded_by_bytes_and_evicts_the_least_recently_used(models_dir, config_cache, model_bytes):
    engine = make(models_dir, config_cache, memory_budget=int(model_bytes * 2.5))
    for code in (A, B):
        engine.generate(domain.GenerationSpec(model_code=code, **SPEC))
    assert engine.pipelines.loaded == [A, B]  # two fit
    engine.generate(domain.GenerationSpec(model_code=A, **SPEC))  # A is the most recently used now
    engine.generate(_inpaint(C))
    assert engine.pipelines.loaded == [A, C]  # B, the least recently used, left
    device_bytes, host_bytes = engine.pipelines.used()
    assert device_bytes <= engine.pipelines.memory_budget and host_bytes == 0
    assert engine.pipelines.counts == {"disk_loads": 3, "host_restores": 0, "offloads": 0, "drops": 1}
    assert engine.capacity().model_slots == 2


def test_a_model_larger_than_the_budget_still_loads_alone(models_dir, config_cache, model_bytes):
    engine = make(models_dir, config_cache, memory_budget=model_bytes // 2)
    for code in (A, B):
        engine.generate(domain.GenerationSpec(model_code=code, **SPEC))
        assert engine.pipelines.loaded == [code]
    assert engine.capacity().model_slots == 1


def test_the_count_cap_still_applies_with_bytes_to_spare(models_dir, config_cache):
    engine = make(models_dir, config_cache, max_loaded=1, memory_budget=None)
    for code in (A, B):
        engine.generate(domain.GenerationSpec(model_code=code, **SPEC))
    assert engine.pipelines.loaded == [B]


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier
def test_an_evicted_model_comes_back_from_the_ram_tier_with_identical_images(
    models_dir, config_cache, model_bytes, dtype
):
    model_bytes = model_bytes if dtype == "float32" else model_bytes // 2  # measured in fp32
    engine = make(
        models_dir, config_cache, memory_budget=int(model_bytes * 1.5), host_budget=model_bytes * 3, dtype=dtype
    )
    first = engine.generate(domain.GenerationSpec(model_code=A, **SPEC))
    with_lora = engine.generate(domain.GenerationSpec(model_code=A, sub_models=LORA, **SPEC))
    engine.generate(domain.GenerationSpec(model_code=B, **SPEC))
    assert engine.pipelines.loaded == [B] and engine.pipelines.on_host == [A]
    assert engine.holdings()["host"] == [A] and engine.holdings()["main"] == [B]
    assert engine.capacity().host_bytes > model_bytes  # its weights and the LoRA adapter it holds

    again = engine.generate(domain.GenerationSpec(model_code=A, **SPEC))
    lora_again = engine.generate(domain.GenerationSpec(model_code=A, sub_models=LORA, **SPEC))
    assert engine.pipelines.loaded == [A] and engine.pipelines.on_host == [B]
    assert engine.pipelines.counts == {"disk_loads": 2, "host_restores": 1, "offloads": 2, "drops": 0}
    # bit-identical: the weights, the scheduler config and the LoRA it held came back as they were (in
    # fp16 `first` was made before the LoRA was loaded beside the weights: one level apart at most)
    assert np.abs(pixels(first) - pixels(again)).max() <= pixel_tolerance(engine)
    assert np.array_equal(pixels(with_lora), pixels(lora_again))
    assert not np.array_equal(pixels(first), pixels(with_lora))


def test_the_ram_tier_is_bounded_by_bytes_too(models_dir, config_cache, model_bytes):
    engine = make(models_dir, config_cache, memory_budget=int(model_bytes * 1.5), host_budget=int(model_bytes * 1.5))
    engine.generate(domain.GenerationSpec(model_code=A, **SPEC))
    engine.generate(domain.GenerationSpec(model_code=B, **SPEC))
    engine.generate(_inpaint(C))
    assert engine.pipelines.loaded == [C] and engine.pipelines.on_host == [B]  # A was dropped for B
    engine.generate(domain.GenerationSpec(model_code=A, **SPEC))  # from disk again; C to RAM, B dropped for it
    assert engine.pipelines.loaded == [A] and engine.pipelines.on_host == [C]
    assert engine.pipelines.counts == {"disk_loads": 4, "host_restores": 0, "offloads": 3, "drops": 2}


def test_a_changed_recipe_is_not_restored_from_the_ram_tier(models_dir, config_cache, model_bytes, monkeypatch):
    engine = make(models_dir, config_cache, memory_budget=int(model_bytes * 1.5), host_budget=model_bytes * 3)
    engine.generate(domain.GenerationSpec(model_code=A, **SPEC))
    engine.generate(domain.GenerationSpec(model_code=B, **SPEC))
    assert engine.pipelines.on_host == [A]
    monkeypatch.setattr(loader, "_recipe", lambda entry: ("another VAE",))  # as if its sidecar changed
    engine.generate(domain.GenerationSpec(model_code=A, **SPEC))
    assert engine.pipelines.counts["host_restores"] == 0 and engine.pipelines.counts["disk_loads"] == 3


def test_preload_loads_the_models_before_any_generation(models_dir, config_cache):
    engine = make(models_dir, config_cache)
    engine.preload([B, A])
    assert engine.pipelines.loaded == [B, A]
    assert engine.holdings()["main"] == [B, A]
    capacity = engine.capacity()
    assert capacity.model_bytes > 0 and capacity.device_total == engine_module.device_memory(engine.pipelines.device)


def test_a_generation_is_planned_to_what_the_device_has_free(models_dir, config_cache, monkeypatch):
    engine = make(models_dir, config_cache, max_chunk=4)
    spec = domain.GenerationSpec(model_code=A, batch_size=3, **SPEC)
    whole = engine.generate(spec)
    runs: list[tuple[int, bool, bool]] = []  # (chunk, decode tiled, decode sliced) of each generation
    real_chunks, real_sliced, real_tiled = memory.run_in_chunks, tiling.sliced_vae, tiling.tiled_vae
    vae: list[bool] = []

    def chunks(seeds, max_chunk, *args):
        runs.append((max_chunk, *vae[-2:]))
        return real_chunks(seeds, max_chunk, *args)

    def sliced(pipe, enabled):
        vae.append(enabled)
        return real_sliced(pipe, enabled)

    def tiled(pipe, enabled):
        vae.append(enabled)
        return real_tiled(pipe, enabled)

    monkeypatch.setattr(memory, "run_in_chunks", chunks)
    monkeypatch.setattr(tiling, "sliced_vae", sliced)
    monkeypatch.setattr(tiling, "tiled_vae", tiled)
    # a profile where the UNet's activations dominate: room for one image's denoising at a time
    heavy_unet = dataclasses.replace(admission.PROFILES["cpu"], unet_per_pixel=10_000.0, vae_per_pixel=1.0)
    monkeypatch.setitem(admission.PROFILES, "cpu", heavy_unet)
    free = admission.plan(64, 64, 1, 1, None, heavy_unet).peak + 1
    monkeypatch.setattr(engine_module, "free_device_memory", lambda device: free)
    planned = engine.generate(spec)
    # the real profile at 64²: the decode dominates, so the batch stays whole and decodes one at a time
    monkeypatch.setitem(
        admission.PROFILES, "cpu", dataclasses.replace(heavy_unet, unet_per_pixel=1.0, vae_per_pixel=10_000.0)
    )
    engine.generate(spec)
    monkeypatch.setattr(engine_module, "free_device_memory", lambda device: 2**40)
    engine.generate(spec)
    assert runs == [(1, False, False), (3, False, True), (3, False, False)]
    # image i comes from seed + i however it is chunked (batched math differs by ~1e-6)
    assert np.abs(pixels(whole) - pixels(planned)).max() <= 1


def _inpaint(code):
    """A request of the inpainting model (a third model to the cache): a gray image, its left half masked."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return domain.GenerationSpec(
        model_code=code, init_image=b64(Image.new("RGB", (64, 64), (128, 128, 128))), mask_image=b64(mask), **SPEC
    )


def test_the_engine_applies_its_speed_switches_to_each_model_it_loads(models_dir, config_cache):
    import torch

    from picserve.engine.acceleration import Acceleration

    engine = make(models_dir, config_cache, speed=Acceleration(channels_last=True))
    engine.preload([A])
    conv = engine.pipelines.models()[0].base.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_a_mistyped_memory_or_speed_setting_stops_the_worker_with_its_name(tmp_path, models_dir):
    from picserve.config import Settings
    from picserve.worker import process

    base = Settings(data_dir=tmp_path, models_dir=models_dir, device="cpu")
    with pytest.raises(SystemExit, match="PICSERVE_MODEL_MEMORY: 'lots' is not an amount of memory"):
        process.build_engine(base.evolve(model_memory="lots"))
    with pytest.raises(SystemExit, match="compile mode 'fastest' is not one of default"):
        process.build_engine(base.evolve(compile="fastest"))
    built = process.build_engine(base.evolve(model_memory="1GiB", model_host_memory="0"))
    assert built.capacity().model_budget == 2**30

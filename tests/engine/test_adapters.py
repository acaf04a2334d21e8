"""LoRA (kohya and PEFT), embeddings and hypernetworks on the tiny SDXL: each works, each leaves no trace."""

import numpy as np
import pytest

from picserve import domain, errors
from picserve.domain import SubModel
from picserve.engine import tiny

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "seed": 11}


def pixels(engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(domain.GenerationSpec(**{**BASE, **fields})).images[0], dtype=np.int16)


def lora(code, weight=1.0):
    return SubModel("lora", code, weight)


@pytest.fixture
def base(engine):
    return pixels(engine)


def assert_base_restored(engine, base):
    assert np.array_equal(pixels(engine), base)


@pytest.mark.parametrize("code", ["kohya-0", "peft-0"])
def test_each_lora_format_changes_the_output_and_unloads(engine, base, code):
    with_lora = pixels(engine, sub_models=(lora(code),))
    assert np.abs(with_lora - base).max() > 0
    assert_base_restored(engine, base)


def test_lora_weights(engine, base):
    assert np.array_equal(pixels(engine, sub_models=(lora("kohya-0", 0.0),)), base)
    half, full, negative = (pixels(engine, sub_models=(lora("kohya-0", w),)) for w in (0.5, 1.0, -1.0))
    assert np.abs(half - full).max() > 0 and np.abs(negative - full).max() > 0 and np.abs(negative - base).max() > 0
    assert_base_restored(engine, base)


def test_two_loras_mix(engine, base):
    a = pixels(engine, sub_models=(lora("kohya-1"),))
    b = pixels(engine, sub_models=(lora("peft-0"),))
    mixed = pixels(engine, sub_models=(lora("kohya-1", 0.7), lora("peft-0", 0.3)))
    assert np.abs(mixed - a).max() > 0 and np.abs(mixed - b).max() > 0
    assert np.array_equal(pixels(engine, sub_models=(lora("kohya-1"),)), a)  # switching back is exact
    assert_base_restored(engine, base)


def test_switching_keeps_adapters_loaded(engine):
    model = engine.pipelines.get(tiny.TINY_CODE)
    pixels(engine, sub_models=(lora("kohya-2"),))
    pixels(engine, sub_models=(lora("kohya-3"),))
    names = list(model.loras)
    pixels(engine, sub_models=(lora("kohya-2", 0.4),))
    assert list(model.loras)[-1] == "lora_kohya_2" and set(names) <= set(model.loras)  # nothing reloaded
    assert "lora_kohya_2" in engine.holdings()["lora"]


def test_lora_eviction_is_bounded(engine, base):
    model = engine.pipelines.get(tiny.TINY_CODE)
    limit = engine.adapters.max_loras
    engine.adapters.max_loras = 2
    try:
        for code in ("kohya-0", "kohya-1", "kohya-2", "kohya-3"):
            pixels(engine, sub_models=(lora(code),))
        assert list(model.loras) == ["lora_kohya_2", "lora_kohya_3"]
        assert set(model.base.get_list_adapters()["unet"]) == {"lora_kohya_2", "lora_kohya_3"}
    finally:
        engine.adapters.max_loras = limit
    assert_base_restored(engine, base)


def test_multi_vector_embedding_works_and_unloads_completely(engine):
    model = engine.pipelines.get(tiny.TINY_CODE)
    sizes = (
        len(model.base.tokenizer),
        len(model.base.tokenizer_2),
        model.base.text_encoder.get_input_embeddings().weight.shape[0],
    )
    prompt = "a photo of emb-a"
    plain = pixels(engine, prompt=prompt)
    with_embedding = pixels(engine, prompt=prompt, sub_models=(SubModel("embedding", "emb-a"),))
    assert np.abs(with_embedding - plain).max() > 0
    assert (
        len(model.base.tokenizer),
        len(model.base.tokenizer_2),
        model.base.text_encoder.get_input_embeddings().weight.shape[0],
    ) == sizes
    assert np.array_equal(pixels(engine, prompt=prompt), plain)
    negative = pixels(engine, negative_prompt="emb-b", sub_models=(SubModel("embedding", "emb-b"),))
    assert np.abs(negative - pixels(engine, negative_prompt="emb-b")).max() > 0


def test_hypernetwork_works_with_its_weight_and_restores_processors(engine, base):
    unet = engine.pipelines.get(tiny.TINY_CODE).base.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    assert np.array_equal(pixels(engine, sub_models=(SubModel("hypernetwork", "hyper-a", 0.0),)), base)
    changed = pixels(engine, sub_models=(SubModel("hypernetwork", "hyper-a", 1.0),))
    assert np.abs(changed - base).max() > 0
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    with_lora = pixels(engine, sub_models=(SubModel("hypernetwork", "hyper-a"), lora("kohya-0")))
    assert np.abs(with_lora - changed).max() > 0  # composes with a LoRA
    assert_base_restored(engine, base)


def test_everything_at_once_then_nothing(engine, base):
    subs = (
        lora("kohya-0", 0.6),
        lora("peft-0", -0.4),
        SubModel("embedding", "emb-a"),
        SubModel("hypernetwork", "hyper-a", 0.5),
    )
    out = pixels(engine, prompt="emb-a, a cat", sub_models=subs)
    assert np.abs(out - base).max() > 0
    assert_base_restored(engine, base)


def test_an_sd1_lora_fails_cleanly_at_run_time(engine, base):
    # The API refuses it before queueing; should one reach the engine, it fails with a message, not a crash.
    with pytest.raises(errors.GenerationError, match="sd15-style"):
        pixels(engine, sub_models=(lora("sd15-style"),))
    assert_base_restored(engine, base)


def test_a_vanished_file_is_reported(engine, tmp_path):
    with pytest.raises(errors.GenerationError, match="no longer in the models folder"):
        pixels(engine, sub_models=(lora("not-there"),))

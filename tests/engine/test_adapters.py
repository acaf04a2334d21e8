"""LoRA (kohya and PEFT), embeddings and hypernetworks on the tiny SDXL: each works, each leaves no trace."""

import numpy as np
import pytest

from picserve import domain, errors
from picserve.domain import SubModel
from picserve.engine import tiny
from tests.engine.dtypes import pixel_tolerance

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "seed": 11}


def pixels(engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(domain.GenerationSpec(**{**BASE, **fields})).images[0], dtype=np.int16)


def lora(code, weight=1.0):
    return SubModel("lora", code, weight)


@pytest.fixture
def base(engine):
    return pixels(engine)


def assert_base_restored(engine, base):
    # bit for bit in float32; in float16 a model with adapters loaded (disabled) may round 1 level apart
    assert np.abs(pixels(engine) - base).max() <= pixel_tolerance(engine)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
@pytest.mark.parametrize("code", ["kohya-0", "peft-0"])
def test_each_lora_format_changes_the_output_and_unloads(engine, base, code):
    with_lora = pixels(engine, sub_models=(lora(code),))
    assert np.abs(with_lora - base).max() > 0
    assert_base_restored(engine, base)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_lora_weights(engine, base):
    assert np.array_equal(pixels(engine, sub_models=(lora("kohya-0", 0.0),)), base)
    half, full, negative = (pixels(engine, sub_models=(lora("kohya-0", w),)) for w in (0.5, 1.0, -1.0))
    assert np.abs(half - full).max() > 0 and np.abs(negative - full).max() > 0 and np.abs(negative - base).max() > 0
    assert_base_restored(engine, base)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
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


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
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


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
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


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
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


# --- sub-models that fail half-way: all or nothing ---------------------------------------------------
# The broken files live in a models folder of their own (the tiny SDXL and a few good sub-models linked
# in), with an engine of its own, so the session's models folder and engine never see them. The API
# refuses most such files at submit time; these tests call the engine directly, for its own guarantee.


@pytest.fixture(scope="module")
def broken_engine(models_dir, config_cache, tmp_path_factory):
    from picserve import catalog
    from picserve.engine import tiny_submodels as subs
    from picserve.engine.engine import Engine

    root = tmp_path_factory.mktemp("broken-models")
    (root / "main").symlink_to(models_dir / "main", target_is_directory=True)
    for name in ("lora/kohya-0.safetensors", "embedding/emb-a.safetensors", "hypernetwork/hyper-a.pt"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).symlink_to(models_dir / name)
    subs.write_broken_embedding(root / "embedding", "broken-emb")
    subs.write_broken_embedding(root / "embedding", "no-clip-g", clip_g=False)
    subs.write_broken_lora(root / "lora", "broken-lora")
    subs.write_broken_hypernetwork(root / "hypernetwork", "broken-hyper")
    return Engine(catalog.Catalog(root), device="cpu", cache_dir=config_cache)


def model_state(engine) -> dict:
    """What sub-models change on the loaded model: vocabularies, embedding matrices, adapters, processors."""
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    return {
        "vocab": (len(pipe.tokenizer), len(pipe.tokenizer_2)),
        "embeddings": (
            tuple(pipe.text_encoder.get_input_embeddings().weight.shape),
            tuple(pipe.text_encoder_2.get_input_embeddings().weight.shape),
        ),
        "adapters": {
            name: sorted(getattr(module, "peft_config", {}))
            for name, module in (("unet", pipe.unet), ("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2))
        },
        "listed": {k: sorted(v) for k, v in pipe.get_list_adapters().items()},
        "processors": {k: type(v) for k, v in pipe.unet.attn_processors.items()},
    }


def assert_no_adapter(engine, adapter):
    state = model_state(engine)
    assert all(adapter not in names for names in state["adapters"].values()), state["adapters"]
    assert all(adapter not in names for names in state["listed"].values()), state["listed"]
    assert adapter not in engine.pipelines.get(tiny.TINY_CODE).loras
    assert adapter not in engine.holdings()["lora"]


@pytest.mark.parametrize("code", ["broken-emb", "no-clip-g"])
def test_an_embedding_whose_clip_g_part_fails_leaves_nothing_in_the_first_encoder(broken_engine, code):
    prompt = f"a photo of {code}"  # the token itself: a leftover in the first tokenizer would change it
    before, plain = model_state(broken_engine), pixels(broken_engine, prompt=prompt)
    with pytest.raises(errors.GenerationError, match=f"embedding '{code}'.*clip_g"):
        pixels(broken_engine, prompt=prompt, sub_models=(SubModel("embedding", code),))
    assert model_state(broken_engine) == before
    assert np.array_equal(pixels(broken_engine, prompt=prompt), plain)


def test_a_lora_whose_te2_part_fails_leaves_no_adapter_anywhere(broken_engine):
    before, base = model_state(broken_engine), pixels(broken_engine)
    for _ in range(2):  # the second try meets the same error, not "adapter name already in use"
        with pytest.raises(errors.GenerationError, match="LoRA 'broken-lora' could not be applied") as failed:
            pixels(broken_engine, sub_models=(lora("broken-lora"),))
        assert "already in use" not in str(failed.value)
        assert_no_adapter(broken_engine, "lora_broken_lora")
        assert model_state(broken_engine) == before
        assert np.array_equal(pixels(broken_engine), base)


def test_a_broken_lora_beside_a_good_one_leaves_the_good_one_working(broken_engine):
    base = pixels(broken_engine)
    good = pixels(broken_engine, sub_models=(lora("kohya-0", 0.8),))
    with pytest.raises(errors.GenerationError, match="broken-lora"):
        pixels(broken_engine, sub_models=(lora("kohya-0", 0.8), lora("broken-lora")))
    assert_no_adapter(broken_engine, "lora_broken_lora")
    assert np.array_equal(pixels(broken_engine), base)
    assert np.array_equal(pixels(broken_engine, sub_models=(lora("kohya-0", 0.8),)), good)
    assert np.array_equal(pixels(broken_engine), base)


def test_a_failure_late_in_a_request_takes_back_the_sub_models_applied_before_it(broken_engine):
    before, base = model_state(broken_engine), pixels(broken_engine)
    prompt = "emb-a, a photo of broken-emb"
    plain = pixels(broken_engine, prompt=prompt)
    subs = (lora("kohya-0"), SubModel("embedding", "emb-a"), SubModel("hypernetwork", "hyper-a"))
    for broken in (SubModel("embedding", "broken-emb"), SubModel("hypernetwork", "broken-hyper")):
        with pytest.raises(errors.GenerationError, match=broken.code):
            pixels(broken_engine, prompt=prompt, sub_models=(*subs, broken))
        state = model_state(broken_engine)
        assert (state["vocab"], state["embeddings"], state["processors"]) == (
            before["vocab"],
            before["embeddings"],
            before["processors"],
        )
        assert np.array_equal(pixels(broken_engine, prompt=prompt), plain)
    assert np.array_equal(pixels(broken_engine), base)


def test_a_hypernetwork_whose_layers_do_not_chain_fails_before_denoising(broken_engine):
    before, base = model_state(broken_engine), pixels(broken_engine)
    with pytest.raises(errors.GenerationError, match="hypernetwork 'broken-hyper' could not be applied"):
        pixels(broken_engine, sub_models=(SubModel("hypernetwork", "broken-hyper"),))
    assert model_state(broken_engine) == before
    assert np.array_equal(pixels(broken_engine), base)


def test_a_failure_during_generation_restores_everything(broken_engine):
    prompt = "emb-a, a photo of a cat"
    plain = pixels(broken_engine, prompt=prompt)
    before = model_state(broken_engine)
    subs = (lora("kohya-0"), SubModel("embedding", "emb-a"), SubModel("hypernetwork", "hyper-a", 0.5))

    def cancel(progress: float) -> None:
        if progress > 0:  # mid-denoising, with every sub-model applied (0.0 is right after the load)
            raise errors.TaskCanceled()

    spec = domain.GenerationSpec(**{**BASE, "prompt": prompt, "sub_models": subs})
    with pytest.raises(errors.TaskCanceled):
        broken_engine.generate(spec, on_step=cancel)
    state = model_state(broken_engine)
    assert (state["vocab"], state["embeddings"], state["processors"]) == (
        before["vocab"],
        before["embeddings"],
        before["processors"],
    )
    assert np.array_equal(pixels(broken_engine, prompt=prompt), plain)  # the LoRA stays loaded, disabled

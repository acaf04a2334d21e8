"""The real diffusers pipeline on the tiny SDXL: properties, not pixels."""

import numpy as np
import pytest
import torch

from picserve import domain, errors
from picserve.engine import sdxl_base, tiny

SMALL = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 3, "seed": 7}


def pixels(generated, i=0):
    return np.asarray(generated.images[i], dtype=np.int16)


def test_single_file_equals_diffusers_folder(models_dir):
    from diffusers import StableDiffusionXLPipeline

    folder = StableDiffusionXLPipeline.from_pretrained(models_dir / "main" / f"{tiny.TINY_CODE}-diffusers")
    single = StableDiffusionXLPipeline.from_single_file(
        str(models_dir / "main" / f"{tiny.TINY_CODE}.safetensors"),
        config=str(models_dir / "main" / f"{tiny.TINY_CODE}-diffusers"),
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_both_model_forms_generate_the_same_image(engine):
    a = engine.generate(domain.GenerationSpec(**SMALL))
    b = engine.generate(domain.GenerationSpec(**{**SMALL, "model_code": f"{tiny.TINY_CODE}-diffusers"}))
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_same_seed_same_bytes_other_seed_other_image(engine):
    a = engine.generate(domain.GenerationSpec(**SMALL)).pngs()
    b = engine.generate(domain.GenerationSpec(**SMALL)).pngs()
    c = engine.generate(domain.GenerationSpec(**{**SMALL, "seed": 8}))
    assert a == b
    assert np.abs(pixels(c) - pixels(engine.generate(domain.GenerationSpec(**SMALL)))).max() > 0


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_batch_image_i_is_seed_plus_i(engine):
    batch = engine.generate(domain.GenerationSpec(**{**SMALL, "batch_size": 3}))
    assert batch.seeds == [7, 8, 9]
    alone = engine.generate(domain.GenerationSpec(**{**SMALL, "seed": 9}))
    # Batched math differs from single runs by ~1e-6 before quantisation to 8 bits.
    assert np.abs(pixels(batch, 2) - pixels(alone)).max() <= 1


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_large_batches_run_in_chunks(engine):
    chunk = engine.max_chunk
    engine.max_chunk = 2
    try:
        steps = []
        out = engine.generate(domain.GenerationSpec(**{**SMALL, "batch_size": 5}), steps.append)
    finally:
        engine.max_chunk = chunk
    assert len(out.images) == 5 and out.seeds == [7, 8, 9, 10, 11]
    # 0 once the model is loaded, then each chunk: its start, then its three steps (3 chunks × 3 steps)
    assert steps == pytest.approx([0.0, *(p for c in range(3) for p in [c / 3] + [(3 * c + i) / 9 for i in (1, 2, 3)])])


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_sizes_not_multiple_of_8_are_exact(engine):
    out = engine.generate(domain.GenerationSpec(**{**SMALL, "width": 100, "height": 70}))
    assert out.images[0].size == (100, 70)


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
@pytest.mark.parametrize("sampler", domain.SAMPLER_NAMES)
def test_every_sampler_runs_and_reproduces(engine, sampler):
    spec = domain.GenerationSpec(**{**SMALL, "sampler": sampler, "steps": 4})
    assert engine.generate(spec).pngs() == engine.generate(spec).pngs()


def test_clip_skip_changes_the_output(engine):
    base = pixels(engine.generate(domain.GenerationSpec(**SMALL)))
    skipped = pixels(engine.generate(domain.GenerationSpec(**{**SMALL, "clip_skip": 2})))
    assert np.abs(base - skipped).max() > 0


def test_clip_skip_deeper_than_the_encoder_is_a_broken_caller_contract(engine):
    # The API refuses it before queueing (ParamError, from the file's header): the engine only asserts.
    with pytest.raises(AssertionError, match="ClipSkip 9 is deeper"):
        engine.generate(domain.GenerationSpec(**{**SMALL, "clip_skip": 9}))


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier (tests/conftest.py)
def test_cfg_and_negative_prompt_matter(engine):
    base = pixels(engine.generate(domain.GenerationSpec(**SMALL)))  # pixels, not PNG bytes (those hold the prompt)
    assert np.abs(base - pixels(engine.generate(domain.GenerationSpec(**{**SMALL, "cfg_scale": 2.0})))).max() > 0
    assert (
        np.abs(base - pixels(engine.generate(domain.GenerationSpec(**{**SMALL, "negative_prompt": "dog"})))).max() > 0
    )


def test_step_callback_reports_and_cancels(engine):
    seen = []
    engine.generate(domain.GenerationSpec(**SMALL), seen.append)
    assert seen == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0])  # model loaded, denoising starts, 3 steps

    def cancel(progress):
        if progress > 0.5:
            raise errors.TaskCanceled()

    with pytest.raises(errors.TaskCanceled):
        engine.generate(domain.GenerationSpec(**SMALL), cancel)
    # the cached pipeline still works afterwards
    assert engine.generate(domain.GenerationSpec(**SMALL)).images


def test_a_cancel_during_the_model_load_stops_before_denoising(engine):
    seen = []

    def cancel(progress):
        seen.append(progress)
        raise errors.TaskCanceled()

    with pytest.raises(errors.TaskCanceled):
        engine.generate(domain.GenerationSpec(**{**SMALL, "seed": 99}), cancel)
    assert seen == [0.0]  # the first call comes right after the load: no step ran


def test_a_cancel_between_chunks_stops_before_the_next_chunk(engine):
    chunk = engine.max_chunk
    engine.max_chunk = 2
    seen = []

    def cancel_at_second_chunk(progress):
        seen.append(progress)
        if len(seen) == 6:  # load, chunk 1 start, its 3 steps, then chunk 2's start
            raise errors.TaskCanceled()

    try:
        with pytest.raises(errors.TaskCanceled):
            engine.generate(domain.GenerationSpec(**{**SMALL, "batch_size": 5}), cancel_at_second_chunk)
    finally:
        engine.max_chunk = chunk
    assert seen == pytest.approx([0.0, 0.0, 1 / 9, 2 / 9, 3 / 9, 3 / 9])  # no step of chunk 2 ran
    assert engine.generate(domain.GenerationSpec(**SMALL)).images


def test_one_generation_at_a_time(engine):
    import threading

    inside, release = threading.Event(), threading.Event()
    second_started = []

    def hold(progress):
        inside.set()
        assert release.wait(30)

    def note(progress):
        second_started.append(progress)

    first = threading.Thread(target=engine.generate, args=(domain.GenerationSpec(**SMALL), hold))
    first.start()
    try:
        assert inside.wait(60)
        second = threading.Thread(target=engine.generate, args=(domain.GenerationSpec(**SMALL), note))
        second.start()
        second.join(0.5)
        assert second.is_alive() and second_started == []  # waiting for the first generation's lock
    finally:
        release.set()
        first.join(60)
    second.join(60)
    assert not second.is_alive() and second_started[-1] == 1.0


def test_png_carries_a1111_parameters(engine):
    from io import BytesIO

    from PIL import Image

    png = engine.generate(domain.GenerationSpec(**{**SMALL, "negative_prompt": "blurry"})).pngs()[0]
    text = Image.open(BytesIO(png)).text["parameters"]
    assert text.splitlines()[0] == "a photo of a cat"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 3, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 64x64, Model: picserve-tiny" in text


def test_unknown_model_is_reported(engine):
    # the API refuses an unknown model at submit; at run time it can only have vanished since
    with pytest.raises(errors.ModelLoadError, match="no longer in the models folder"):
        engine.generate(domain.GenerationSpec(**{**SMALL, "model_code": "nope"}))


def test_shipped_sdxl_config_is_sdxl_base(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    folder = sdxl_base.config_dir(tmp_path)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert CLIPTokenizer.from_pretrained(folder / "tokenizer_2").pad_token_id == 0
    assert UNet2DConditionModel.load_config(sdxl_base.config_dir(tmp_path, inpaint=True) / "unet")["in_channels"] == 9

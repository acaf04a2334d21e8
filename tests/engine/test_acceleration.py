"""Engine speed switches (engine/acceleration.py) on the tiny SDXL: each gives eager's images, and with a
compiled UNet, switching LoRAs (hot-swap slots) neither recompiles nor changes what a fresh load gives.

torch.compile runs with backend "eager" here: dynamo traces, guards and decides to recompile exactly as
with inductor, without generating code (inductor takes minutes per shape on this CPU, see
../shared/notes/sdxl-on-cpu.md §6). "No recompilation" is proved by running every request after the
warm-up under ``torch.compiler.set_stance("fail_on_recompile")``, which raises on any new compilation,
and by dynamo's graph counter; the dispatcher's call counters show which requests ran compiled.

The references come from a plain engine (no switch) whose LoRAs are all unloaded before each reference
request, so that each is loaded fresh the plain way (PEFT adapters) into a pipeline that holds no other.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch._dynamo.utils import counters

from picserve import catalog, domain, errors
from picserve.domain import SubModel
from picserve.engine import acceleration, tiny
from picserve.engine import tiny_submodels as subs
from picserve.engine.acceleration import Acceleration
from picserve.engine.engine import Engine
from picserve.engine.lora.apply import lora_slots
from picserve.engine.lora.slots import LoraSlots
from tests.engine import lycoris_files

BASE = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 2, "seed": 7}

#: the compiled engine's switches: compiled for 64×64 only, two small slots (fused QKV: its own test)
COMPILED = Acceleration(
    channels_last=True,
    compile_mode="default",
    compile_backend="eager",
    compile_sizes=((64, 64),),
    lora_max_rank=8,
    lora_slots=2,
)


def lora(code: str, weight: float = 1.0) -> SubModel:
    return SubModel("lora", code, weight)


@pytest.fixture(scope="module")
def models(models_dir, tmp_path_factory):
    """A models folder of its own: the tiny SDXL and LoRAs of the session's linked in, plus a LoRA of a
    rank above the slots' and a LyCORIS (LoHa) file, written here."""
    root = tmp_path_factory.mktemp("accel-models")
    (root / "main").symlink_to(models_dir / "main", target_is_directory=True)
    (root / "lora").mkdir()
    for name in ("kohya-0", "kohya-1", "kohya-2", "peft-0"):
        (root / "lora" / f"{name}.safetensors").symlink_to(models_dir / "lora" / f"{name}.safetensors")
    (root / "hypernetwork").symlink_to(models_dir / "hypernetwork", target_is_directory=True)
    subs.write_lora_kohya(root / "lora", "kohya-rank16", seed=5, rank=16)
    alphas = load_file(str(subs.write_lora_kohya(root / "lora", "kohya-alphas", seed=6)))
    for i, key in enumerate(k for k in sorted(alphas) if k.endswith(".alpha")):
        alphas[key] = torch.tensor(2.0 if i % 2 else 4.0)  # alpha per layer, as resized LoRAs have
    save_file(alphas, str(root / "lora" / "kohya-alphas.safetensors"))
    lycoris_files.write("loha", root / "lora", "loha")
    return catalog.Catalog(root)


@pytest.fixture(scope="module")
def fresh(models):
    """`fresh(**fields)`: the reference image of a request, its LoRAs loaded fresh the plain way."""
    plain = Engine(models, device="cpu")
    done: dict[str, np.ndarray] = {}

    def image(**fields) -> np.ndarray:
        key = repr(sorted(fields.items()))
        if key not in done:
            model = plain.pipelines.get(tiny.TINY_CODE)
            model.base.unload_lora_weights()  # every PEFT layer gone: the pipeline as loaded
            model.loras.clear()
            done[key] = pixels(plain, **fields)
        return done[key]

    return image


def pixels(engine: Engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(domain.GenerationSpec(**{**BASE, **fields})).images[0], dtype=np.int16)


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within float rounding (a padded rank, a fused matmul sum in another order): ±1 of 255."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()


def accelerated(models, options: Acceleration) -> Engine:
    """An engine whose model is prepared with `options`, as the loader does right after loading it."""
    engine = Engine(models, device="cpu")
    acceleration.prepare(engine.pipelines.get(tiny.TINY_CODE).base, options)
    return engine


@pytest.fixture(scope="module")
def compiled(models):
    """An engine with everything on and its UNet compiled, warmed up: (engine, graphs after warm-up)."""
    engine = accelerated(models, COMPILED)
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = acceleration.warm_up(pipe)
    assert set(seconds) == {(64, 64)}
    return engine


def dispatch(engine: Engine) -> acceleration._Dispatch:
    state = acceleration.prepared(engine.pipelines.get(tiny.TINY_CODE).base)
    assert state is not None and state.dispatch is not None
    return state.dispatch


# --- settings ------------------------------------------------------------------------------------------
def test_settings_spelling():
    assert Acceleration() == Acceleration.parse()  # all off
    assert not Acceleration().compiles and Acceleration().compile_sizes == acceleration.SDXL_SIZES
    parsed = Acceleration.parse(compile="max-autotune", compile_sizes=" 1024x1024, 832X1216 ", lora_slots=2)
    assert parsed.compile_mode == "max-autotune" and parsed.compile_sizes == ((1024, 1024), (832, 1216))
    assert Acceleration.parse(compile="off").compile_mode is None
    with pytest.raises(ValueError, match="fastest"):
        Acceleration.parse(compile="fastest")
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        acceleration.parse_sizes("1024")
    with pytest.raises(ValueError, match="multiple of 8"):
        Acceleration.parse(compile_sizes="1000x1001")


# --- eager switches --------------------------------------------------------------------------------------
def test_channels_last_and_fused_qkv_give_eager_images_with_and_without_loras(models, fresh):
    engine = accelerated(models, Acceleration(channels_last=True, fuse_qkv=True))
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    state = acceleration.prepared(pipe)
    assert state is not None and state.fused
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    base = fresh()
    assert_same_image(pixels(engine), base)
    # A PEFT LoRA and a LyCORIS patch change to_q/to_k/to_v, which the fused layers would not see:
    # the UNet is unfused while they are applied, and fused again (from the base weights) after.
    for subs_ in ((lora("kohya-0"),), (lora("loha", 0.8),), (lora("kohya-0", 0.5), lora("loha"))):
        assert_same_image(pixels(engine, sub_models=subs_), fresh(sub_models=subs_))
        assert not state.fused
    assert_same_image(pixels(engine), base)
    assert state.fused


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier: an idle slot must not touch an fp16 model either
def test_slots_at_weight_zero_leave_the_base_model_bit_for_bit(models, dtype):
    pipe = tiny.build_pipeline().to(dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)

    def image() -> np.ndarray:
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(1)
            return pipe(prompt="a cat", width=64, height=64, num_inference_steps=2, generator=generator).images[0]

    def same(got: np.ndarray, want: np.ndarray) -> bool:
        """Bit for bit in fp32; in fp16 the PEFT layers' kernels may round one level apart (dtypes.py)."""
        return bool(np.abs(got.astype(int) - want).max() <= (0 if dtype == "float32" else 1))

    base = np.asarray(image()).astype(int)
    slots = LoraSlots(pipe.unet, count=2, max_rank=8)
    assert same(np.asarray(image()), base)  # empty slots
    state = load_file(str(models.get("lora", "kohya-0").path))
    converted, alphas, metadata = pipe.lora_state_dict(state, unet_config=pipe.unet.config, return_lora_metadata=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slots.load(pipe, 0, converted, alphas, metadata)
    slots.set_weights({0: 1.0})
    assert np.abs(np.asarray(image()).astype(int) - base).max() > 0  # the slot works
    slots.set_weights({})
    assert same(np.asarray(image()), base)  # a loaded slot at weight 0: exactly nothing


# --- the compiled UNet ---------------------------------------------------------------------------------
def test_warm_up_compiled_the_graph(compiled):
    assert counters["stats"]["unique_graphs"] >= 1
    assert dispatch(compiled).compiled_calls == 3  # warm_up: 3 calls, one size


@pytest.mark.parametrize("code", [tiny.TINY_CODE, tiny.TINY_INPAINT_CODE])
def test_warm_up_feeds_the_unet_what_requests_do(models_dir, code):
    # warm_up calls the UNet itself (a txt2img pipeline could not drive an inpainting UNet): its inputs
    # must fit either kind; that they are what requests give is shown by no recompilation below.
    pipe = Engine(catalog.Catalog(models_dir), device="cpu").pipelines.get(code).base
    with torch.inference_mode():
        (out,) = pipe.unet(**acceleration._unet_inputs(pipe.unet, 64, 48))
    assert out.shape == (2, 4, 6, 8)


def test_hot_swapping_loras_gives_fresh_images_and_never_recompiles(compiled, fresh):
    sequence = [
        (lora("kohya-0"),),
        (lora("kohya-1"),),
        (),
        (lora("kohya-0"),),
        (lora("kohya-0", 0.4),),
        (lora("kohya-0", 0.7), lora("peft-0", -0.5)),  # both slots; kohya-1 evicted for peft-0
        (lora("kohya-2"),),  # a third file into a slot of a file not in this request
        (),
    ]
    graphs, calls = counters["stats"]["unique_graphs"], dispatch(compiled).compiled_calls
    images = []
    with torch.compiler.set_stance("fail_on_recompile"):
        for sub_models in sequence:
            images.append(pixels(compiled, sub_models=sub_models))
    assert counters["stats"]["unique_graphs"] == graphs
    assert dispatch(compiled).compiled_calls - calls == len(sequence) * BASE["steps"]  # all compiled
    for sub_models, image in zip(sequence, images, strict=True):
        assert_same_image(image, fresh(sub_models=sub_models))
    assert np.array_equal(images[2], images[-1])  # no LoRA: the same image, whatever the slots hold
    slots = lora_slots(compiled.pipelines.get(tiny.TINY_CODE).base)
    assert slots is not None and set(slots.holding) == {"lora_peft_0", "lora_kohya_2"}


def test_lycoris_patches_long_prompts_and_batches_run_compiled_without_recompiling(compiled, fresh):
    cases = [
        {"sub_models": (lora("loha", 0.8), lora("kohya-1", 0.6))},  # LyCORIS: patched into the weights in place
        {"prompt": "a photo of a cat, " * 20, "batch_size": 2},  # two 77-token chunks; a batch of 4 with CFG
    ]
    calls = dispatch(compiled).compiled_calls
    with torch.compiler.set_stance("fail_on_recompile"):
        images = [pixels(compiled, **case) for case in cases]
    assert dispatch(compiled).compiled_calls - calls == len(cases) * BASE["steps"]
    for case, image in zip(cases, images, strict=True):
        assert_same_image(image, fresh(**case))


def test_other_sizes_cfg_one_tiling_and_hypernetworks_run_eager(compiled, fresh):
    cases = [
        {"width": 72},  # not a compile size
        {"cfg_scale": 1.0},  # a batch of 1
        {"tiling": True},  # circular padding
        {"sub_models": (SubModel("hypernetwork", "hyper-a"),)},  # its own attention processors
    ]
    runs = dispatch(compiled)
    calls, eager = runs.compiled_calls, runs.eager_calls
    with torch.compiler.set_stance("fail_on_recompile"):
        images = [pixels(compiled, **case) for case in cases]
    assert (runs.compiled_calls, runs.eager_calls - eager) == (calls, len(cases) * BASE["steps"])
    for case, image in zip(cases, images, strict=True):
        assert_same_image(image, fresh(**case))


def test_loras_the_slots_cannot_take_fail_cleanly_and_the_others_still_work(compiled, fresh):
    with pytest.raises(errors.ModelLoadError, match="more LoRAs than the 2 LoRA slots"):
        pixels(compiled, sub_models=(lora("kohya-0"), lora("kohya-1"), lora("kohya-2")))
    with pytest.raises(errors.ModelLoadError, match="rank 16 is above the 8"):
        pixels(compiled, sub_models=(lora("kohya-rank16"),))
    with torch.compiler.set_stance("fail_on_recompile"):
        after = pixels(compiled, sub_models=(lora("kohya-1"),))
        # alphas that differ by layer: peft would refuse to hot-swap them into a slot made with one alpha
        alphas = pixels(compiled, sub_models=(lora("kohya-alphas"),))
    assert_same_image(after, fresh(sub_models=(lora("kohya-1"),)))
    assert_same_image(alphas, fresh(sub_models=(lora("kohya-alphas"),)))
    slots = lora_slots(compiled.pipelines.get(tiny.TINY_CODE).base)
    assert slots is not None and not slots.dead


def test_a_compiled_unet_without_slots_refuses_plain_loras(models):
    engine = accelerated(models, Acceleration(compile_mode="default", compile_backend="eager", lora_slots=0))
    with pytest.raises(errors.ModelLoadError, match="no LoRA slots"):
        pixels(engine, sub_models=(lora("kohya-0"),))
    assert acceleration.compiled(engine.pipelines.get(tiny.TINY_CODE).base)


@pytest.mark.slow  # two more compilations (about 40 s here)
def test_fused_qkv_under_compile_has_two_graphs_and_switching_never_recompiles(models, fresh):
    options = Acceleration(
        fuse_qkv=True, compile_mode="default", compile_backend="eager", compile_sizes=((64, 64),), lora_slots=0
    )
    engine = accelerated(models, options)
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acceleration.warm_up(pipe)  # fused (requests without LoRAs) and unfused (with)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    state = acceleration.prepared(pipe)
    assert state is not None and state.fused
    sequence = [(), (lora("loha", 0.8),), (), (lora("loha", -0.5),), ()]
    calls = dispatch(engine).compiled_calls
    with torch.compiler.set_stance("fail_on_recompile"):
        images = [pixels(engine, sub_models=sub_models) for sub_models in sequence]
    assert dispatch(engine).compiled_calls - calls == len(sequence) * BASE["steps"]
    for sub_models, image in zip(sequence, images, strict=True):
        assert_same_image(image, fresh(sub_models=sub_models))
    assert state.fused

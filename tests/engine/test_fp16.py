"""What only reduced precision shows, on the tiny engine in float16 (and bfloat16) on the CPU.

Users run picserve on GPUs in fp16; these bugs were invisible to an fp32 suite:
- diffusers' `from_pipe` turned the img2img/inpaint pipelines, and so the whole shared model, to fp32;
- running out of memory in the VAE decode left diffusers' fp32 upcast of the VAE in place, and every
  later request failed with "Input type (c10::Half) and bias type (float) should be the same";
- NaN latents or a NaN decode became a black PNG reported as a success.
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from picserve import catalog, domain, errors
from picserve.domain import SubModel
from picserve.engine import precision, tiny
from picserve.engine.engine import Engine
from tests.engine.test_failures import OUT_OF_MEMORY, out_of_memory

SPEC = domain.GenerationSpec(model_code=tiny.TINY_CODE, prompt="a photo of a cat", width=64, height=64, steps=3, seed=5)
SUBS = (SubModel("lora", "kohya-0", 0.8), SubModel("embedding", "emb-a"), SubModel("hypernetwork", "hyper-a", 0.7))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SOURCE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
MASK = Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16))


def pixels(generated: object, i: int = 0) -> np.ndarray:
    return np.asarray(generated.images[i], dtype=np.int16)  # type: ignore[attr-defined]


def assert_all_in(engine: Engine, dtype: torch.dtype) -> None:
    """Every module of every loaded model, and of its derived pipelines, is in `dtype` on the device,
    and holds no tensor of another dtype."""
    for model in engine.pipelines.models():
        for pipe in [model.base, *model._derived_pipelines.values()]:
            for name in precision.COMPONENTS:
                module = getattr(pipe, name)
                for tensor in [*module.parameters(), *module.buffers()]:
                    if tensor.is_floating_point():
                        assert tensor.dtype == dtype, f"{model.code} {name}: {tensor.dtype}"
                    assert tensor.device == engine.pipelines.device


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def low(request, models_dir, config_cache) -> Engine:
    """A tiny engine in a reduced precision, with a RAM tier holding one model."""
    return Engine(
        catalog.Catalog(models_dir),
        device="cpu",
        cache_dir=config_cache,
        dtype=request.param,
        max_loaded=1,
        host_budget=10**9,
    )


def test_every_mode_sub_model_cache_move_and_restore_keeps_the_models_dtype(low):
    dtype = low.pipelines.dtype
    low.generate(SPEC)
    model = low.pipelines.get(tiny.TINY_CODE)
    loaded_bytes = model.nbytes
    steps = {
        "txt2img": SPEC,
        "img2img": SPEC.evolve(init_image=b64(SOURCE), strength=0.6),
        "inpaint": SPEC.evolve(init_image=b64(SOURCE), mask_image=b64(MASK), strength=0.8),
        "sub-models": SPEC.evolve(prompt="emb-a, a photo of a cat", sub_models=SUBS),
        "img2img with sub-models": SPEC.evolve(init_image=b64(SOURCE), strength=0.6, sub_models=SUBS),
        "inpainting model": SPEC.evolve(
            model_code=tiny.TINY_INPAINT_CODE, init_image=b64(SOURCE), mask_image=b64(MASK), strength=1.0
        ),
        "restored from RAM": SPEC.evolve(init_image=b64(SOURCE), strength=0.6),
        "tiling": SPEC.evolve(tiling=True),
    }
    for what, spec in steps.items():
        out = low.generate(spec)
        assert_all_in(low, dtype)
        image = pixels(out)
        assert image.std() > 0, f"{what}: a flat image"
    assert low.pipelines.counts["host_restores"] >= 1  # the cache moves happened
    assert low.pipelines.on_host == [tiny.TINY_INPAINT_CODE]
    # the model kept its size: no module went to fp32 (LoRA adapters kept loaded count in, in its dtype)
    assert low.pipelines.get(tiny.TINY_CODE).nbytes < loaded_bytes * 1.5


def test_before_the_fix_from_pipe_would_have_made_the_model_fp32(models_dir, config_cache):
    """The reproduction of the first bug, on diffusers itself: `from_pipe` without a dtype casts the
    shared modules to fp32 (what the loader did); the loader now passes the model's dtype."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, dtype="float16")
    base = engine.pipelines.get(tiny.TINY_CODE).base
    StableDiffusionXLImg2ImgPipeline.from_pipe(base)
    assert set(precision.module_dtypes(base).values()) == {torch.float32}


@pytest.mark.parametrize("batch", [1, 2], ids=["one-image", "batch-retried"])
def test_out_of_memory_in_the_upcast_vae_decode_leaves_the_vae_in_fp16(models_dir, config_cache, batch):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, dtype="float16")
    base = pixels(engine.generate(SPEC))
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    assert pipe.vae.config.force_upcast  # diffusers decodes this fp16 VAE in fp32

    with out_of_memory(pipe.vae.decoder, lambda size: size > 1 or batch == 1, OUT_OF_MEMORY["cuda"]) as calls:
        if batch == 1:
            with pytest.raises(errors.OutOfMemory):
                engine.generate(SPEC)
        else:  # the picserve retry one image at a time: it used to fail on the VAE left in fp32
            retried = engine.generate(SPEC.evolve(batch_size=2))
            assert calls == [2, 1, 1] and len(retried.images) == 2
    assert precision.module_dtypes(pipe)["vae"] == torch.float16
    assert np.array_equal(pixels(engine.generate(SPEC)), base)  # the next request runs, as before


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, models_dir, config_cache) -> Engine:
    """fp16 engine on a models folder with two tiny models made to overflow fp16 on purpose: one whose
    UNet output layer is scaled past fp16's range (NaN/Inf latents), one whose VAE decoder is (finite
    latents, a decode that overflows in fp16 but not in fp32)."""
    root = tmp_path_factory.mktemp("overflow") / "models"
    (root / "main").mkdir(parents=True)
    original = models_dir / "main" / f"{tiny.TINY_CODE}.safetensors"
    tensors = load_file(str(original))
    unet = dict(tensors)
    unet["model.diffusion_model.out.2.weight"] = unet["model.diffusion_model.out.2.weight"] * 1e6
    save_file(unet, str(root / "main" / "hot-unet.safetensors"))
    vae = dict(tensors)
    # The decoder's input convolution scaled 10⁴ times (its weights still fit fp16): the residual stream
    # passes 65504 in fp16 (inf, then NaN in the group norms) but not in fp32, where the group norms undo
    # the scale and the decode is finite.
    for key in ("first_stage_model.decoder.conv_in.weight", "first_stage_model.decoder.conv_in.bias"):
        vae[key] = vae[key] * 1e4
    save_file(vae, str(root / "main" / "hot-vae.safetensors"))
    config = models_dir / "main" / f"{tiny.TINY_CODE}-diffusers"  # the tiny model's configs, by its sidecar
    for code in ("hot-unet", "hot-vae"):
        (root / "main" / f"{code}.json").write_text(json.dumps({"Config": str(config)}))
    return Engine(catalog.Catalog(root), device="cpu", cache_dir=config_cache, dtype="float16")


def test_nan_latents_are_an_error_of_their_own_naming_the_cause(overflowing):
    with pytest.raises(errors.NonFiniteImage) as failed:
        overflowing.generate(SPEC.evolve(model_code="hot-unet"))
    assert failed.value.ret_code == 504
    message = failed.value.message
    assert "an image of 64×64" in message and "overflowed in float16" in message
    assert "PICSERVE_DTYPE=bfloat16" in message and "Nothing was charged" in message


def test_a_vae_that_overflows_in_fp16_is_decoded_again_in_fp32(overflowing, caplog):
    pipe = overflowing.pipelines.get("hot-vae").base
    pipe.vae.register_to_config(force_upcast=False)  # an "fp16-fix"-style VAE: decoded in fp16 at first
    with caplog.at_level("WARNING", logger="picserve.engine.precision"):
        out = overflowing.generate(SPEC.evolve(model_code="hot-vae"))
    assert "decoding again in float32" in caplog.text
    image = pixels(out)
    assert np.isfinite(image).all() and image.std() > 0  # not a black square
    assert precision.module_dtypes(pipe)["vae"] == torch.float16  # back in fp16 after the fp32 decode


def test_a_decode_that_is_not_finite_even_in_fp32_is_an_error(overflowing, monkeypatch):
    pipe = overflowing.pipelines.get("hot-vae").base
    monkeypatch.setattr(pipe.vae, "decode", lambda latents, return_dict=False: (latents * math.nan,))
    with pytest.raises(errors.NonFiniteImage, match="even in float32"):
        overflowing.generate(SPEC.evolve(model_code="hot-vae"))
    assert precision.module_dtypes(pipe)["vae"] == torch.float16


def test_dtype_names(models_dir):
    from picserve.engine.loader import resolve_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32 and resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bf16", cpu) == resolve_dtype("bfloat16", cuda) == torch.bfloat16
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match=r"PICSERVE_DTYPE must be auto, float16, bfloat16 or float32 \(got 'half8'\)"):
        resolve_dtype("half8", cpu)


def test_the_worker_builds_its_engine_in_the_settings_dtype(tmp_path, models_dir):
    from picserve.config import Settings
    from picserve.worker.process import build_engine

    settings = Settings(models_dir=models_dir, data_dir=tmp_path, device="cpu", dtype="bfloat16")
    engine = build_engine(settings)
    assert isinstance(engine, Engine) and engine.pipelines.dtype == torch.bfloat16
    assert engine.capacity().dtype == "bfloat16"
    with pytest.raises(SystemExit, match="PICSERVE_DTYPE must be"):
        build_engine(settings.evolve(dtype="fp8"))


def test_a_hypernetwork_runs_as_a_copy_in_the_models_dtype_and_the_cached_file_stays_as_read(models_dir, config_cache):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, dtype="float16")
    engine.generate(SPEC.evolve(sub_models=(SubModel("hypernetwork", "hyper-a", 0.7),)))
    (cached,) = engine.adapters._file_contents.values()
    tensors = [p for pair in cached.values() for module in pair for p in module.parameters()]
    assert tensors and {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}  # not moved
    assert_all_in(engine, torch.float16)


def test_the_engine_makes_its_cuda_device_current_for_each_generation(monkeypatch, engine):
    import contextlib

    from picserve.engine import engine as engine_module

    used: list[torch.device] = []
    real = engine_module.on_device

    def recording(device: torch.device) -> contextlib.AbstractContextManager[object]:
        used.append(device)
        return real(device)

    monkeypatch.setattr(engine_module, "on_device", recording)
    engine.generate(SPEC)
    engine.preload([tiny.TINY_CODE])
    assert used == [engine.pipelines.device] * 2  # the engine thread's every torch call runs inside it
    monkeypatch.undo()

    entered: list[torch.device] = []

    class Recorder:
        def __init__(self, device: torch.device) -> None:
            entered.append(device)

        def __enter__(self) -> None: ...

        def __exit__(self, *exc: object) -> None: ...

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with engine_module.on_device(torch.device("cuda:1")):
        pass
    with engine_module.on_device(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda:1")]  # a worker on cuda:1 compiles and allocates there, not on 0


def test_out_of_memory_in_the_upcast_vae_encode_of_img2img_leaves_the_vae_in_fp16(models_dir, config_cache):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, dtype="float16")
    img2img = SPEC.evolve(init_image=b64(SOURCE), strength=0.6)
    base = pixels(engine.generate(img2img))
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    # diffusers upcasts the VAE for img2img's encode too, and casts it back only when the encode returns
    with out_of_memory(pipe.vae.encoder, lambda size: True, OUT_OF_MEMORY["cuda"]), pytest.raises(errors.OutOfMemory):
        engine.generate(img2img)
    assert set(precision.module_dtypes(pipe).values()) == {torch.float16}
    assert np.array_equal(pixels(engine.generate(img2img)), base)

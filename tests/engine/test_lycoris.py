"""LyCORIS and DoRA files: picserve's patches against lycoris' own merge, layer by layer and image by image."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from picserve import domain, errors
from picserve.engine import checkpoint, tiny
from picserve.engine.lora import lycoris
from tests.engine import lycoris_files
from tests.engine.dtypes import pixel_tolerance


def _layers(pipe):
    for part in ("unet", "text_encoder", "text_encoder_2"):
        for name, module in getattr(pipe, part).named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                yield f"{part}.{name}", module


@pytest.mark.parametrize("variant", list(lycoris_files.VARIANTS))
def test_patched_layers_equal_lycoris_merge_and_the_base_comes_back_exactly(variant, tmp_path):
    path, merged = lycoris_files.write(variant, tmp_path, variant)
    state = load_file(str(path))
    assert lycoris.is_lycoris(state)
    pipe = tiny.build_pipeline()
    base = {
        name: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
        for name, m in _layers(pipe)
    }
    patcher = lycoris.Patcher(pipe)
    for weight in (1.0, 0.6, -0.5):
        patcher.apply([(variant, state, weight)])
        expected = merged(weight)
        assert expected
        worst = 0.0
        for name, module in _layers(pipe):
            want, want_bias = expected.get(name, base[name])
            worst = max(worst, (module.weight - want).abs().max().item())
            torch.testing.assert_close(module.weight, want.to(module.weight), rtol=1e-5, atol=1e-6, msg=name)
            if want_bias is not None:
                torch.testing.assert_close(module.bias, want_bias.to(module.bias), rtol=1e-5, atol=1e-6)
    patcher.restore()
    for name, module in _layers(pipe):
        assert torch.equal(module.weight, base[name][0]), name
        if base[name][1] is not None:
            assert torch.equal(module.bias, base[name][1]), name


# --- through the engine: images ---------------------------------------------------------------------

BASE_CODE = "lyco-base"
IMAGE_VARIANTS = ("locon-tucker", "loha", "lokr", "full", "dora", "dokr")


@pytest.fixture(scope="module")
def lyco(tmp_path_factory, models_dir):
    """An engine on a models folder of its own: a base model, lycoris-written files, and for each file
    the base model with lycoris' merge applied, as a diffusers folder of its own (no picserve code)."""
    from diffusers import StableDiffusionXLPipeline

    from picserve import catalog
    from picserve.engine.engine import Engine

    root = tmp_path_factory.mktemp("lyco-models")
    folder, _ = tiny.write_model(root, code=BASE_CODE)
    (root / "lora").mkdir()
    shutil.copy(models_dir / "lora" / "kohya-0.safetensors", root / "lora" / "kohya-0.safetensors")
    merges = {}
    for variant in IMAGE_VARIANTS:
        _, merges[variant] = lycoris_files.write(variant, root / "lora", variant)
    _, merges["peft-dora"] = lycoris_files.write_peft_dora(root / "lora", "peft-dora")
    written = {}

    def merged_model(variant: str, weight: float) -> str:
        """The code of the base model merged by lycoris with `variant` at `weight` (written once)."""
        code = f"merged-{variant}-{weight:g}"
        if code not in written:
            pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
            modules = {
                f"{part}.{name}": m
                for part in ("unet", "text_encoder", "text_encoder_2")
                for name, m in getattr(pipe, part).named_modules()
            }
            with torch.no_grad():
                for name, (value, bias) in merges[variant](weight).items():
                    modules[name].weight.copy_(value)
                    if bias is not None:
                        modules[name].bias.copy_(bias)
            pipe.save_pretrained(str(root / "main" / code))
            (root / "main" / f"{code}.json").write_text((root / "main" / f"{BASE_CODE}-diffusers.json").read_text())
            written[code] = True
        return code

    def make_engine(dtype: str = "float32"):
        return Engine(catalog.Catalog(root, ttl=0), device="cpu", max_loaded=2, cache_dir=root / "cache", dtype=dtype)

    return make_engine, merged_model, root


def _image(engine, model: str, *subs: tuple[str, float]) -> np.ndarray:
    spec = domain.GenerationSpec(
        model_code=model,
        prompt="a lighthouse at dusk",
        width=64,
        height=64,
        steps=4,
        seed=5,
        sub_models=tuple(domain.SubModel("lora", code, weight) for code, weight in subs),
    )
    return np.asarray(engine.generate(spec).images[0], dtype=np.int16)


@pytest.fixture(scope="module")
def merging(lyco):
    """One engine for the merged-model comparisons, and its base image (each test checks it comes back)."""
    make_engine, merged_model, _ = lyco
    engine = make_engine()
    return engine, merged_model, _image(engine, f"{BASE_CODE}-diffusers")


@pytest.mark.parametrize(
    ("variant", "weight"),
    [(v, 0.7) for v in IMAGE_VARIANTS] + [("dora", 1.0), ("loha", -0.5), ("peft-dora", 1.0), ("peft-dora", 0.6)],
)
def test_the_image_with_a_file_equals_the_image_of_the_model_lycoris_merged(merging, variant, weight):
    engine, merged_model, base = merging
    patched = _image(engine, f"{BASE_CODE}-diffusers", (variant, weight))
    oracle = _image(engine, merged_model(variant, weight))
    assert np.abs(patched - base).max() > 10  # the file changes the image
    assert np.abs(patched - oracle).max() <= 1, np.abs(patched - oracle).max()  # fp32 rounding at most
    assert np.array_equal(_image(engine, f"{BASE_CODE}-diffusers"), base)  # and the base comes back exactly


# --- through the engine: weights, switching, naming, refusals -------------------------------------


@pytest.fixture(scope="module")
def engine_on_files(lyco, dtype):
    make_engine, _, root = lyco
    return make_engine(dtype), root


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier: patches taken back exactly in fp16 too
def test_weight_zero_switching_and_mixing_with_a_peft_lora_are_exact(engine_on_files):
    engine, _ = engine_on_files
    model = f"{BASE_CODE}-diffusers"
    base = _image(engine, model)
    for code in ("loha", "dora", "peft-dora"):  # a DoRA at 0 would still renormalise: it is not applied at all
        assert np.array_equal(_image(engine, model, (code, 0.0)), base), code
    loha, lokr = _image(engine, model, ("loha", 0.8)), _image(engine, model, ("lokr", 0.8))
    both = _image(engine, model, ("loha", 0.8), ("lokr", 0.8))
    with_peft = _image(engine, model, ("loha", 0.8), ("kohya-0", 0.5))  # a PEFT adapter beside a patch
    assert len({a.tobytes() for a in (base, loha, lokr, both, with_peft)}) == 5
    assert "lora_loha" in engine.holdings()["lora"] and "lora_kohya_0" in engine.holdings()["lora"]
    # switching back and forth is exact (bit for bit in fp32; in fp16 the PEFT adapter now loaded beside
    # the patches, disabled, may round one pixel level apart: tests/engine/dtypes.py)
    tolerance = pixel_tolerance(engine)
    assert np.abs(_image(engine, model, ("lokr", 0.8)) - lokr).max() <= tolerance
    assert np.abs(_image(engine, model, ("loha", 0.8)) - loha).max() <= tolerance
    assert np.abs(_image(engine, model) - base).max() <= tolerance
    assert "lora_loha" not in engine.holdings()["lora"]


def test_sd_scripts_sgm_names_apply_as_the_diffusers_names(engine_on_files):
    # kohya's sd-scripts name SDXL UNet layers after the original (SGM) UNet: input_blocks_4_1_…
    engine, root = engine_on_files
    state = load_file(str(root / "lora" / "loha.safetensors"))
    pipe = tiny.build_pipeline()
    config = dict(pipe.unet.config)
    renamed, moved = {}, 0
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        if name.startswith("lora_unet_"):
            module = next(n for n, _ in pipe.unet.named_modules() if "lora_unet_" + n.replace(".", "_") == name)
            new = "lora_unet_" + checkpoint.sgm_unet_key(module + ".weight", config).removesuffix(".weight").replace(
                ".", "_"
            )
            moved += new != name
            name = new
        renamed[f"{name}.{suffix}"] = value
    assert moved > 100
    save_file(renamed, str(root / "lora" / "loha-sgm.safetensors"))
    model = f"{BASE_CODE}-diffusers"
    assert np.array_equal(_image(engine, model, ("loha-sgm", 0.8)), _image(engine, model, ("loha", 0.8)))


def test_a_file_with_keys_matching_no_layer_is_refused_whole_naming_them(engine_on_files):
    engine, root = engine_on_files
    state = load_file(str(root / "lora" / "lokr.safetensors"))
    state["lora_unet_input_blocks_99_1_proj_in.lokr_w1"] = torch.ones(2, 2)
    state["lora_te3_encoder_layers_0_q_proj.lokr_w1"] = torch.ones(2, 2)
    save_file(state, str(root / "lora" / "lokr-foreign.safetensors"))
    model = f"{BASE_CODE}-diffusers"
    base = _image(engine, model)
    with pytest.raises(errors.ModelLoadError) as refused:
        _image(engine, model, ("loha", 0.5), ("lokr-foreign", 1.0))
    message = refused.value.message
    assert "'lokr-foreign'" in message and "lora_unet_input_blocks_99_1_proj_in" in message
    assert "lora_te3_encoder_layers_0_q_proj" in message and "match no layer" in message
    assert np.array_equal(_image(engine, model), base)  # nothing applied, not even the good file


def test_a_plain_lora_with_a_layer_the_model_lacks_is_refused_not_loaded_in_part(engine_on_files):
    # diffusers' loader would load the layers it finds and skip the others without a word
    engine, root = engine_on_files
    state = load_file(str(root / "lora" / "kohya-0.safetensors"))
    state["lora_unet_output_blocks_9_1_transformer_blocks_0_attn2_to_k.lora_down.weight"] = torch.zeros(4, 64)
    state["lora_unet_output_blocks_9_1_transformer_blocks_0_attn2_to_k.lora_up.weight"] = torch.zeros(64, 4)
    save_file(state, str(root / "lora" / "kohya-extra.safetensors"))
    model = f"{BASE_CODE}-diffusers"
    base = _image(engine, model)
    with pytest.raises(errors.ModelLoadError, match=r"1 of its layers match no layer .*output_blocks_9_1"):
        _image(engine, model, ("kohya-extra", 1.0))
    assert "lora_kohya_extra" not in engine.holdings()["lora"]
    assert np.array_equal(_image(engine, model), base)

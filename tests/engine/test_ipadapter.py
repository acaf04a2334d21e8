"""IP-Adapter reference images (engine/ipadapter.py, ipadapter_info.py) on the tiny SDXL.

The files are h94/IP-Adapter's formats at the tiny model's widths (tests/engine/ipadapter_files.py): a
plain adapter for a ViT-bigG-like encoder, a plain and a Plus one for a ViT-H-like encoder, laid out as
h94's repository has them, so diffusers' own `load_ip_adapter` reads the same files as the oracle.
Images are 64×64 in 3 or 4 steps and compared as float arrays, bit for bit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picserve import errors, ipadapter_info
from picserve.engine import tiny
from picserve.engine.ipadapter import IPAdapters, Reference, guided
from tests.engine.ipadapter_files import (
    TINY_CROSS,
    TINY_LAYERS,
    TINY_VIT_BIGG,
    TINY_VIT_H,
    write_h94,
    write_ip_adapter,
    write_not_an_ip_adapter,
)

PROMPT = "a photo of a cat"
#: tensor name → shape, as modelinfo.read_shapes gives them
Shapes = dict[str, tuple[int, ...]]
#: (h94 name, its subfolder, the encoder folder as diffusers' load_ip_adapter is told it)
PLAIN = ("ip-adapter_sdxl", "sdxl_models", "image_encoder")
PLUS = ("ip-adapter-plus_sdxl_vit-h", "sdxl_models", "models/image_encoder")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny.build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def h94(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("h94")
    write_h94(root)
    return root


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def adapters() -> IPAdapters:
    return IPAdapters()


def generate(pipe, steps: int = 2, **kwargs) -> np.ndarray:
    out = pipe(
        prompt=PROMPT,
        width=64,
        height=64,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **kwargs,
    )
    return out.images[0]


@pytest.fixture(scope="module")
def base(pipe) -> np.ndarray:
    return generate(pipe)


def ref(h94: Path, which: tuple[str, str, str], image: Image.Image, weight: float = 0.8, **kw) -> Reference:
    name, sub, encoder = which
    folder = h94 / encoder if "/" in encoder else h94 / sub / encoder
    return Reference(h94 / sub / f"{name}.safetensors", folder, image, weight, **kw)


def unet_state(pipe) -> dict:
    unet = pipe.unet
    return {
        "processors": dict(unet.attn_processors),
        "modules": list(unet._modules),
        "encoder_hid_proj": unet.encoder_hid_proj,
        "hid_dim_type": (unet.config.encoder_hid_dim_type, unet.config["encoder_hid_dim_type"]),
        "config": dict(unet.config),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "pipe_config": dict(pipe.config),
        "components": (pipe.image_encoder, pipe.feature_extractor),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["processors"].keys() == before["processors"].keys()
    assert all(after["processors"][k] is v for k, v in before["processors"].items())  # the very objects
    assert {k: v for k, v in after.items() if k != "processors"} == {
        k: v for k, v in before.items() if k != "processors"
    }


def test_files_are_what_the_catalog_sees(h94):
    plain, vit_h, plus = (
        ipadapter_info.inspect_file(h94 / "sdxl_models" / f"{n}.safetensors")
        for n in ("ip-adapter_sdxl", "ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h")
    )
    assert (plain.kind, plain.tokens, plain.image_embeds, plain.encoder_output) == ("plain", 4, 28, "image_embeds")
    assert (plus.kind, plus.tokens, plus.image_embeds, plus.encoder_output) == ("plus", 16, 32, "hidden_states")
    for info in (plain, vit_h, plus):
        assert (info.cross_attention, info.layers, info.problem) == (TINY_CROSS, len(TINY_LAYERS), None)
        assert ipadapter_info.misfit(info, TINY_CROSS, len(TINY_LAYERS)) is None
        assert "cross-attention width of 96" in str(ipadapter_info.misfit(info))  # SDXL's 2048
    bigg, vit = (ipadapter_info.read_encoder(h94 / f) for f in ("sdxl_models/image_encoder", "models/image_encoder"))
    assert (bigg.hidden_size, bigg.projection_dim) == tuple(TINY_VIT_BIGG.values())
    assert (vit.hidden_size, vit.projection_dim, vit.image_size) == (*TINY_VIT_H.values(), 32)
    assert ipadapter_info.encoder_misfit(plain, bigg) is None and ipadapter_info.encoder_misfit(plus, vit) is None
    assert "28-wide image_embeds" in str(ipadapter_info.encoder_misfit(plain, vit))
    assert "32-wide hidden states" in str(ipadapter_info.encoder_misfit(plus, bigg))


def test_real_sdxl_shapes_are_recognised():
    # SDXL's cross-attentions in processor order: down 1 (4 × 640), down 2 (20 × 1280), up 0 (30 × 1280),
    # up 1 (6 × 640), mid (10 × 1280)
    widths = [640] * 4 + [1280] * 50 + [640] * 6 + [1280] * 10
    layers: Shapes = {
        f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight": (w, 2048) for i, w in enumerate(widths) for kv in "kv"
    }
    plain_proj: Shapes = {"image_proj.proj.weight": (8192, 1280), "image_proj.norm.weight": (2048,)}
    plus_proj: Shapes = {
        "image_proj.latents": (1, 16, 1280),
        "image_proj.proj_in.weight": (1280, 1280),
        "image_proj.proj_out.weight": (2048, 1280),
    }
    faceid_proj: Shapes = {
        "image_proj.proj.0.weight": (1024, 512),
        "image_proj.proj.2.weight": (8192, 1024),
        "image_proj.norm.weight": (2048,),
    }
    plain, plus, faceid = (ipadapter_info.inspect(proj | layers) for proj in (plain_proj, plus_proj, faceid_proj))
    assert (plain.kind, plain.encoder, plain.layers, ipadapter_info.misfit(plain, layers=70)) == (
        "plain",
        "ViT-bigG",
        70,
        None,
    )
    assert (plus.kind, plus.encoder, plus.tokens, ipadapter_info.misfit(plus)) == ("plus", "ViT-H", 16, None)
    assert faceid.kind == "faceid" and "InsightFace" in (ipadapter_info.misfit(faceid) or "")
    assert "no image_proj" in (ipadapter_info.inspect({"lora_unet_x.lora_down.weight": (4, 8)}).problem or "")


@pytest.mark.parametrize("which", [PLAIN, PLUS], ids=["plain", "plus"])
def test_matches_diffusers_load_ip_adapter(pipe, h94, image, adapters, base, which):
    with torch.inference_mode(), adapters.applied(pipe, [ref(h94, which, image)], guidance_scale=5.0) as applied:
        ours = generate(pipe, **applied.pipe_kwargs())
    name, sub, encoder = which
    pipe.load_ip_adapter(str(h94), subfolder=sub, weight_name=f"{name}.safetensors", image_encoder_folder=encoder)
    try:
        projection = type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__
        assert projection == ("ImageProjection" if which is PLAIN else "IPAdapterPlusImageProjection")
        pipe.set_ip_adapter_scale(0.8)
        theirs = generate(pipe, ip_adapter_image=image)
        if which is PLAIN:  # diffusers at scale 0 is the base image too: leaving a unit at weight 0 out is exact
            pipe.set_ip_adapter_scale(0.0)
            assert np.array_equal(generate(pipe, ip_adapter_image=image), base)
    finally:
        pipe.unload_ip_adapter()
    assert np.array_equal(ours, theirs) and not np.array_equal(ours, base)


def test_weight_zero_and_the_exit_leave_the_pipeline_as_it_was(pipe, h94, image, adapters, base):
    before = unet_state(pipe)
    with adapters.applied(pipe, [ref(h94, PLAIN, image, weight=0.0)], guidance_scale=5.0) as applied:
        assert applied.pipe_kwargs() == {} and np.array_equal(generate(pipe, **applied.pipe_kwargs()), base)
    with adapters.applied(pipe, [ref(h94, PLUS, image)], guidance_scale=5.0) as applied:
        assert pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
        assert not np.array_equal(generate(pipe, **applied.pipe_kwargs()), base)
    assert_same_state(before, unet_state(pipe))
    assert np.array_equal(generate(pipe), base)
    with pytest.raises(RuntimeError, match="cancelled"), adapters.applied(pipe, [ref(h94, PLAIN, image)], 5.0):
        raise RuntimeError("cancelled")
    assert_same_state(before, unet_state(pipe))
    assert np.array_equal(generate(pipe), base)


def test_two_adapters_with_their_own_encoders(pipe, h94, image, adapters, base):
    other = Image.fromarray(255 - np.asarray(image))
    units = [ref(h94, PLAIN, image, 0.7), ref(h94, PLUS, other, 0.6)]
    with adapters.applied(pipe, units, guidance_scale=5.0) as applied:
        assert [tuple(e.shape) for e in applied.embeds] == [(2, 1, 28), (2, 1, 17, 32)]
        both = generate(pipe, **applied.pipe_kwargs())
    singles = []
    for unit in units:
        with adapters.applied(pipe, [unit], guidance_scale=5.0) as applied:
            singles.append(generate(pipe, **applied.pipe_kwargs()))
    assert np.isfinite(both).all() and all(not np.array_equal(both, x) for x in [*singles, base])
    assert np.array_equal(generate(pipe), base)


def test_guided_steps():
    assert [guided(i, 4, 0.0, 1.0) for i in range(4)] == [True] * 4
    assert [guided(i, 4, 0.5, 1.0) for i in range(4)] == [False, False, True, True]
    assert [guided(i, 4, 0.0, 0.6) for i in range(4)] == [True, True, False, False]  # step 2 ends at 0.75
    assert not any(guided(i, 4, 0.5, 0.5) for i in range(4))


def test_step_range_matches_diffusers_cutoff_callback(pipe, h94, image, adapters):
    from diffusers.callbacks import IPAdapterScaleCutoffCallback

    def with_range(start: float, end: float, callback=None) -> np.ndarray:
        with adapters.applied(pipe, [ref(h94, PLAIN, image, start=start, end=end)], guidance_scale=5.0) as applied:
            return generate(pipe, steps=4, **applied.pipe_kwargs(callback))

    full, first_three, second_half = with_range(0.0, 1.0), with_range(0.0, 0.75), with_range(0.5, 1.0)
    assert np.array_equal(with_range(0.0, 0.9), first_three)  # step 3 ends at 1.0 > 0.9
    assert np.array_equal(with_range(0.0, 0.2), generate(pipe, steps=4))  # step 0 ends at 0.25: none guided
    seen: list[int] = []

    def engine_callback(_pipe, step: int, _timestep, tensors: dict) -> dict:
        seen.append(step)
        return tensors

    assert np.array_equal(with_range(0.0, 0.75, engine_callback), first_three)
    assert seen == [0, 1, 2, 3]  # the engine's own callback, chained after the schedule's, at every step
    assert not np.array_equal(first_three, full) and not np.array_equal(second_half, full)
    # diffusers' documented cut-off: the scale set to 0 after step int(4 × 0.5) = 2, so steps 0–2 guided
    pipe.load_ip_adapter(str(h94), subfolder=PLAIN[1], weight_name=f"{PLAIN[0]}.safetensors")
    try:
        pipe.set_ip_adapter_scale(0.8)
        cutoff = IPAdapterScaleCutoffCallback(cutoff_step_ratio=0.5)
        theirs = generate(pipe, steps=4, ip_adapter_image=image, callback_on_step_end=cutoff)
    finally:
        pipe.unload_ip_adapter()
    assert np.array_equal(first_three, theirs)


def test_controlnet_pipeline_from_pipe(pipe, h94, image, adapters):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    with torch.random.fork_rng():
        torch.manual_seed(0)
        controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_channels=3)
    control = StableDiffusionXLControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
    control.set_progress_bar_config(disable=True)
    hint = Image.fromarray(np.asarray(image.resize((64, 64)))[::-1].copy())
    without = generate(control, image=hint)
    with adapters.applied(control, [ref(h94, PLUS, image, start=0.0, end=0.5)], guidance_scale=5.0) as applied:
        with_reference = generate(control, image=hint, **applied.pipe_kwargs())
    assert not np.array_equal(with_reference, without)
    assert np.array_equal(generate(control, image=hint), without)


def test_bin_files_load_as_the_safetensors(pipe, h94, image, adapters, tmp_path):
    from safetensors.torch import load_file

    flat = load_file(str(h94 / "sdxl_models" / f"{PLAIN[0]}.safetensors"))
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        part, _, name = key.partition(".")
        nested[part][name] = tensor
    torch.save(nested, tmp_path / "ip-adapter_sdxl.bin")
    assert ipadapter_info.inspect_file(tmp_path / "ip-adapter_sdxl.bin").kind == "plain"
    unit = ref(h94, PLAIN, image)
    images = []
    for adapter in (unit.adapter, tmp_path / "ip-adapter_sdxl.bin"):
        with adapters.applied(pipe, [Reference(adapter, unit.encoder, image, 0.8)], 5.0) as applied:
            images.append(generate(pipe, **applied.pipe_kwargs()))
    assert np.array_equal(images[0], images[1])


def test_files_that_do_not_fit_raise_model_load_error(pipe, h94, image, adapters, tmp_path):
    before = unet_state(pipe)
    encoder = ref(h94, PLAIN, image).encoder
    wrong_width = write_ip_adapter(tmp_path / "sd15-like.safetensors", cross_attention=64)
    cases = {
        write_not_an_ip_adapter(tmp_path / "lora.safetensors"): "lora.safetensors: not an IP-Adapter",
        tmp_path / "gone.safetensors": "gone.safetensors: cannot be read",
        wrong_width: "sd15-like.safetensors: it is made for a UNet cross-attention width of 64",
    }
    for path, message in cases.items():
        with (
            pytest.raises(errors.ModelLoadError, match=message),
            adapters.applied(pipe, [Reference(path, encoder, image)], 5.0),
        ):
            pass
    # the ViT-H-like encoder cannot feed the plain bigG adapter: named with the adapter
    misfit = Reference(ref(h94, PLAIN, image).adapter, ref(h94, PLUS, image).encoder, image)
    with pytest.raises(
        errors.ModelLoadError, match=r"ip-adapter_sdxl.safetensors with the image encoder image_encoder"
    ):
        with adapters.applied(pipe, [misfit], 5.0):
            pass
    with pytest.raises(errors.ModelLoadError, match="image encoder nowhere"):
        with adapters.applied(pipe, [Reference(misfit.adapter, tmp_path / "nowhere", image)], 5.0):
            pass
    assert_same_state(before, unet_state(pipe))


def test_cache_keeps_files_until_they_change(pipe, h94, image, tmp_path):
    cache = IPAdapters(budget=1)  # over budget at once: only what the request at hand uses stays
    plain = ref(h94, PLAIN, image)
    plain = Reference(Path(shutil.copy(plain.adapter, tmp_path)), plain.encoder, image)  # a file of its own to touch
    device, dtype = pipe.unet.device, pipe.unet.dtype
    with cache.applied(pipe, [plain], 5.0):
        pass
    assert cache.loaded() == [str(plain.adapter), str(plain.encoder)] and cache.nbytes > 0
    held = cache.adapter(plain.adapter, device, dtype)
    assert cache.adapter(plain.adapter, device, dtype) is held  # not read again
    stat = plain.adapter.stat()
    os.utime(plain.adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.adapter(plain.adapter, device, dtype) is not held  # a changed file is read again
    half = cache.encoder(plain.encoder, device, torch.bfloat16)  # held per dtype (the UNet's)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    plus = ref(h94, PLUS, image)
    with cache.applied(pipe, [plus], 5.0):
        pass
    assert cache.loaded() == [str(plus.adapter), str(plus.encoder)]  # the rest dropped for the budget
    cache.clear()
    assert cache.loaded() == [] and cache.nbytes == 0

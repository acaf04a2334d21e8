"""The files users actually download: v-prediction checkpoints, fp16/bf16/fp8 single files, separate VAEs.

Every model here is the tiny SDXL's weights written again into a models folder of this module's own
(the session's `models_dir` is only read): with `v_pred`/`ztsnr` keys added, in another storage dtype,
or with a VAE file of models/vae named by its sidecar or by the catalog's default.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from picserve import catalog, domain, errors, modelinfo
from picserve.api.actions import list_models
from picserve.engine import checkpoint, prompts, samplers, tiny
from picserve.engine.engine import Engine

PROMPT = "a photo of a cat"
SMALL = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 4, "cfg_scale": 5.0, "seed": 7}
#: storage dtypes of the single-file variants (float32 is the tiny model's own file)
DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8-e4m3": torch.float8_e4m3fn,
    "fp8-e5m2": torch.float8_e5m2,
}
#: the v-prediction recipe diffusers documents for zero-terminal-SNR models
VPRED = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@dataclass
class Folder:
    root: Path
    config: Path  # the tiny model's diffusers folder: configs (and weights) for the reference pipelines
    engine: Engine


def _main(root: Path, code: str, state: dict[str, torch.Tensor], **sidecar: object) -> None:
    save_file(state, str(root / "main" / f"{code}.safetensors"))
    (root / "main" / f"{code}.json").write_text(json.dumps({"Config": "../configs/tiny", **sidecar}))


def _vae_variant(vae: torch.nn.Module, **config: object) -> torch.nn.Module:
    """An AutoencoderKL like `vae` with some config changed (new random weights)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL.from_config({**vae.config, **config})


@pytest.fixture(scope="module")
def folder(tmp_path_factory, models_dir, config_cache) -> Folder:
    root = tmp_path_factory.mktemp("model-files") / "models"
    (root / "main").mkdir(parents=True)
    config = root / "configs" / "tiny"
    shutil.copytree(models_dir / "main" / f"{tiny.TINY_CODE}-diffusers", config)
    state = load_file(str(models_dir / "main" / f"{tiny.TINY_CODE}.safetensors"))
    marker = torch.tensor([])  # NoobAI-XL v-pred files carry empty `v_pred` and `ztsnr` tensors

    _main(root, "eps", state)
    _main(root, "vpred", {**state, "v_pred": marker, "ztsnr": marker})
    _main(root, "vpred-sidecar", state, Prediction="v", ZeroTerminalSNR=True)
    # a diffusers folder says it in its scheduler config
    shutil.copytree(config, root / "main" / "vpred-folder")
    scheduler_file = root / "main" / "vpred-folder" / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()), **VPRED}))
    for name, dtype in DTYPES.items():
        _main(root, name, {k: v.to(dtype) for k, v in state.items()})
    # as fp8 files usually are: the UNet in fp8, the rest in fp16
    mixed = {k: v.to(torch.float8_e4m3fn if k.startswith("model.") else torch.float16) for k, v in state.items()}
    _main(root, "fp8-unet", mixed)

    # VAEs: the model's own with a dimmer decoder output, as a standalone LDM file and as a diffusers folder
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(config / "vae"))
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.25)
        vae.decoder.conv_out.bias.mul_(0.25)
    checkpoint.export_vae(vae, root / "vae" / "dim.safetensors")
    shutil.copy(root / "vae" / "dim.safetensors", root / "vae" / "dim-fp16-fix.safetensors")
    (root / "vae" / "dim-fp16-fix.json").write_text(json.dumps({"ForceUpcast": False}))  # decodes in fp16
    vae.save_pretrained(str(root / "vae" / "dim-folder"))
    checkpoint.export_vae(_vae_variant(vae, latent_channels=16), root / "vae" / "sixteen.safetensors")
    checkpoint.export_vae(_vae_variant(vae, block_out_channels=(8, 16, 32, 32)), root / "vae" / "wide.safetensors")
    (root / "vae" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")

    _main(root, "with-vae", state, Vae="dim")
    _main(root, "with-vae-folder", state, Vae="dim-folder")
    _main(root, "with-fp16-fix-vae", state, Vae="dim-fp16-fix")
    _main(root, "vpred-with-vae", {**state, "v_pred": marker, "ztsnr": marker}, Vae="dim")
    _main(root, "own-vae", state, Vae=None)
    for code, vae_code in {
        "missing-vae": "nowhere",
        "vae-16": "sixteen",
        "vae-wide": "wide",
        "vae-bad": "broken",
    }.items():
        _main(root, code, state, Vae=vae_code)
    engine = Engine(catalog.Catalog(root, ttl=3600), device="cpu", cache_dir=config_cache, max_loaded=2)
    return Folder(root, config, engine)


def generate(engine: Engine, code: str, **fields: object) -> np.ndarray:
    generated = engine.generate(domain.GenerationSpec(model_code=code, **{**SMALL, **fields}))  # type: ignore[arg-type]
    return np.asarray(generated.images[0], dtype=np.int16)


def maxdiff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def reference(config: Path, scheduler: dict[str, object] | None = None) -> np.ndarray:
    """Plain diffusers: the tiny pipeline, its scheduler set by hand, the same seed and settings."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(config), local_files_only=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, **(scheduler or {}))
    # the engine's prompt encoding (A1111 weighting and chunks: not diffusers' encode_prompt), so that
    # what is compared is the denoising alone
    with torch.inference_mode():
        conditioning = prompts.encode(pipe, PROMPT, "", clip_skip=1, guidance=True)
    image = pipe(
        prompt_embeds=conditioning.embeds,
        pooled_prompt_embeds=conditioning.pooled,
        negative_prompt_embeds=conditioning.negative_embeds,
        negative_pooled_prompt_embeds=conditioning.negative_pooled,
        width=64,
        height=64,
        num_inference_steps=SMALL["steps"],
        guidance_scale=SMALL["cfg_scale"],
        generator=[torch.Generator("cpu").manual_seed(SMALL["seed"])],
    ).images[0]
    return np.asarray(image, dtype=np.int16)


# --- v-prediction ---------------------------------------------------------------------------------


def test_v_prediction_is_read_from_the_file_header_or_the_sidecar(folder):
    main = folder.root / "main"
    assert modelinfo.inspect("main", main / "vpred.safetensors").prediction == "v"
    assert modelinfo.inspect("main", main / "vpred.safetensors").zero_terminal_snr is True
    assert modelinfo.inspect("main", main / "eps.safetensors").prediction is None  # the file does not say
    assert modelinfo.inspect("main", folder.config).prediction == "epsilon"  # its scheduler config says
    entries = folder.engine.pipelines.catalog.entries("main")
    assert [(entries[c].prediction, entries[c].zero_terminal_snr) for c in ("eps", "vpred", "vpred-sidecar")] == [
        ("epsilon", False),
        ("v", True),
        ("v", True),
    ]
    models = list_models._models(folder.engine.pipelines.catalog)["MainModels"]
    assert (models["vpred"]["Prediction"], models["vpred"]["ZeroTerminalSNR"]) == ("v", True)
    assert (models["eps"]["Prediction"], models["eps"]["ZeroTerminalSNR"]) == ("epsilon", False)


def test_a_v_prediction_model_gets_the_documented_scheduler_config(folder):
    config = folder.engine.pipelines.get("vpred").scheduler_config
    assert {key: config[key] for key in VPRED} == VPRED
    assert folder.engine.pipelines.get("eps").scheduler_config["prediction_type"] == "epsilon"


def test_a_v_prediction_model_matches_plain_diffusers_and_differs_from_epsilon(folder, report):
    v, eps = generate(folder.engine, "vpred"), generate(folder.engine, "eps")
    v_reference, eps_reference = reference(folder.config, VPRED), reference(folder.config)
    report(
        f"v-pred vs diffusers reference: {maxdiff(v, v_reference)}/255; epsilon vs reference: "
        f"{maxdiff(eps, eps_reference)}/255; v-pred vs epsilon: {maxdiff(v, eps)}/255"
    )
    assert maxdiff(v, v_reference) <= 1
    assert maxdiff(eps, eps_reference) <= 1
    assert maxdiff(v, eps) > 10


def test_v_prediction_declared_by_the_sidecar_or_a_folders_scheduler_is_the_same_as_by_the_keys(folder):
    by_keys = generate(folder.engine, "vpred")
    assert np.array_equal(generate(folder.engine, "vpred-sidecar"), by_keys)
    assert np.array_equal(generate(folder.engine, "vpred-folder"), by_keys)
    listed = list_models._models(folder.engine.pipelines.catalog)["MainModels"]["vpred-folder"]
    assert (listed["Prediction"], listed["ZeroTerminalSNR"]) == ("v", True)


@pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")  # torchsde's rounding, as tb<=t1
@pytest.mark.parametrize("sampler", domain.SAMPLER_NAMES)
def test_every_sampler_runs_on_a_v_prediction_model(folder, sampler):
    model = folder.engine.pipelines.get("vpred")
    scheduler = samplers.make_scheduler(sampler, model.scheduler_config, seed=3)
    assert scheduler.config.prediction_type == "v_prediction"
    if "rescale_betas_zero_snr" in scheduler.config:
        assert scheduler.config.rescale_betas_zero_snr
    else:  # given the zero-terminal-SNR schedule itself: a signal of 2**-24 at the last training step
        alphas_cumprod = torch.cumprod(1 - torch.tensor(scheduler.config.trained_betas), dim=0)
        assert float(alphas_cumprod[-1]) == pytest.approx(2**-24, rel=1e-3)
    pipe = model.base
    pipe.scheduler = scheduler
    with torch.inference_mode():
        images = pipe(
            PROMPT,
            width=64,
            height=64,
            num_inference_steps=4,
            guidance_scale=5.0,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="np",
        ).images
    assert np.isfinite(images).all() and images.std() > 0.01
    # and through the engine: deterministic per seed
    assert np.array_equal(
        generate(folder.engine, "vpred", sampler=sampler), generate(folder.engine, "vpred", sampler=sampler)
    )


# --- storage dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [*DTYPES, "fp8-unet"])
def test_half_and_fp8_single_files_load_upcast_and_give_the_fp32_image(folder, code, report):
    model = folder.engine.pipelines.get(code)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert {p.dtype for p in getattr(model.base, part).parameters()} == {torch.float32}, part
    image, fp32 = generate(folder.engine, code), generate(folder.engine, "eps")
    report(f"{code} vs fp32 single file: maxdiff {maxdiff(image, fp32)}/255, mean {np.abs(image - fp32).mean():.2f}")
    if code.startswith("fp8"):  # fp8 rounds every weight to 3 (e4m3) or 2 (e5m2) mantissa bits
        assert maxdiff(image, fp32) < 128 and np.abs(image - fp32).mean() < 16
    else:
        assert maxdiff(image, fp32) <= 4
    listed = list_models._models(folder.engine.pipelines.catalog)["MainModels"][code]
    assert listed["StorageDtype"] == {"fp16": "float16", "bf16": "bfloat16", "fp8-e5m2": "float8_e5m2"}.get(
        code, "float8_e4m3fn"
    )


# --- separate VAEs --------------------------------------------------------------------------------


def test_a_vae_named_by_the_sidecar_decodes_instead_of_the_models_own(folder, report):
    own, dim = generate(folder.engine, "eps"), generate(folder.engine, "with-vae")
    report(f"own VAE vs a VAE with conv_out scaled by 0.25: maxdiff {maxdiff(own, dim)}/255")
    assert maxdiff(own, dim) > 10
    dim_bias = folder.engine.pipelines.get("with-vae").base.vae.decoder.conv_out.bias.detach()
    own_bias = folder.engine.pipelines.get("eps").base.vae.decoder.conv_out.bias.detach()
    assert torch.allclose(dim_bias, 0.25 * own_bias)
    # the same VAE as a diffusers folder gives the same image; and it composes with v-prediction
    assert np.array_equal(generate(folder.engine, "with-vae-folder"), dim)
    assert maxdiff(generate(folder.engine, "vpred-with-vae"), generate(folder.engine, "vpred")) > 10
    models = list_models._models(folder.engine.pipelines.catalog)
    assert (models["MainModels"]["with-vae"]["Vae"], models["MainModels"]["eps"]["Vae"]) == ("dim", None)
    assert set(models["VaeModels"]) == {"dim", "dim-folder", "dim-fp16-fix", "sixteen", "wide", "broken"}
    assert "eps" in models["VaeModels"]["dim"]["CompatibleMainModels"]
    assert models["VaeModels"]["sixteen"]["CompatibleMainModels"] == []


def test_the_default_vae_applies_to_models_whose_sidecar_names_none(folder, config_cache):
    engine = Engine(catalog.Catalog(folder.root, ttl=3600, default_vae="dim"), device="cpu", cache_dir=config_cache)
    assert np.array_equal(generate(engine, "eps"), generate(folder.engine, "with-vae"))
    assert np.array_equal(generate(engine, "own-vae"), generate(folder.engine, "eps"))  # "Vae": null keeps its own
    assert list_models._models(engine.pipelines.catalog)["MainModels"]["eps"]["Vae"] == "dim"


def test_a_vae_is_not_a_sub_model(folder):
    assert folder.engine.pipelines.catalog.find_sub_model("dim") == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("missing-vae", ["'missing-vae'", "'nowhere'", "the Vae of its sidecar JSON", "not installed", "models/vae"]),
        ("vae-16", ["models/vae/sixteen.safetensors", "does not fit", "16-channel latents", "4-channel"]),
        ("vae-wide", ["models/vae/wide.safetensors", "could not be loaded", "shape"]),
        ("vae-bad", ["models/vae/broken.safetensors", "unreadable"]),
    ],
)
def test_a_vae_that_is_missing_or_does_not_fit_is_refused_by_name(folder, code, words):
    with pytest.raises(errors.ModelLoadError) as caught:
        generate(folder.engine, code)
    message = str(caught.value)
    assert all(word in message for word in words), message
    assert code not in folder.engine.pipelines.loaded
    generate(folder.engine, "eps")  # the engine goes on


def test_a_missing_default_vae_is_refused_naming_the_setting(folder, config_cache):
    engine = Engine(catalog.Catalog(folder.root, ttl=3600, default_vae="gone"), device="cpu", cache_dir=config_cache)
    with pytest.raises(errors.ModelLoadError, match=r"'gone' \(PICSERVE_DEFAULT_VAE\), which is not installed"):
        generate(engine, "eps")


def test_a_single_file_vae_upcasts_by_its_own_sidecar_not_the_main_models_config(folder):
    # diffusers decodes an fp16 VAE in fp32 when its config says force_upcast; a single-file VAE is built
    # on the main model's config, so its own word (the sidecar's ForceUpcast) must win over that one
    def upcast(code: str) -> bool:
        return bool(folder.engine.pipelines.get(code).base.vae.config.force_upcast)

    assert upcast("eps") and upcast("with-vae")  # the tiny model's config: True
    assert not upcast("with-fp16-fix-vae")
    assert np.array_equal(generate(folder.engine, "with-fp16-fix-vae"), generate(folder.engine, "with-vae"))  # fp32

"""ControlNetList on GenerateImagesSDXL and ListControlNets through the API: what is accepted becomes
checked units with their defaults (images stashed like every reference), every refusal at submit names
its field, and ListControlNets lists the usable preprocessors and the installed control models.

The fast tier: in-memory repository and store, FakeEngine, header-only model files (the runs on tiny
real ControlNets are tests/engine/test_controlnet.py).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from picserve import domain, errors
from picserve.engine.fake import FakeEngine
from tests.api.conftest import open_stack
from tests.api.conftest import request as generation
from tests.headers import write_header

#: header-only control models: the hint embedding and one cross-attention projection (its width)
SDXL_CONTROLNET = {
    "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
}
SDXL_UNION = {**SDXL_CONTROLNET, "task_embedding": (8, 320)}
#: h94's ip-adapter-plus_sdxl_vit-h, header only: a Resampler (16 queries of 1280, ViT-H's hidden states in)
#: and keys and values for two cross-attentions of SDXL's 2048-wide context
SDXL_IP_ADAPTER_PLUS = {
    "image_proj.latents": (1, 16, 1280),
    "image_proj.proj_in.weight": (1280, 1280),
    "image_proj.proj_in.bias": (1280,),
    "image_proj.proj_out.weight": (2048, 1280),
    "image_proj.proj_out.bias": (2048,),
    "image_proj.norm_out.weight": (2048,),
    "image_proj.norm_out.bias": (2048,),
    "image_proj.layers.0.0.to_q.weight": (1280, 1280),
    **{f"ip_adapter.{n}.to_{kv}_ip.weight": (640, 2048) for n in (1, 3) for kv in "kv"},
}
#: the config.json of h94's models/image_encoder (OpenCLIP ViT-H/14)
VIT_H = {
    "architectures": ["CLIPVisionModelWithProjection"],
    "hidden_size": 1280,
    "projection_dim": 1024,
    "image_size": 224,
}
SD1_CONTROLNET = {
    "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
}


def image_b64(width: int = 64, height: int = 72, colour: str = "white") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def control_settings(settings):
    root = settings.models_dir
    write_header(root / "controlnet" / "xl-canny.safetensors", SDXL_CONTROLNET)
    write_header(root / "controlnet" / "xl-depth-mid.safetensors", SDXL_CONTROLNET)
    (root / "controlnet" / "xl-depth-mid.json").write_text(json.dumps({"InferenceParams": {"ControlWeight": 0.6}}))
    write_header(root / "controlnet" / "xl-union-promax.safetensors", SDXL_UNION)
    write_header(root / "controlnet" / "control_v11p_sd15_canny.safetensors", SD1_CONTROLNET)
    return settings


@pytest.fixture
def controls(control_settings):
    with open_stack(control_settings) as opened:
        yield opened


def unit(model: str = "xl-canny", image: int = 0, **fields) -> dict:
    return {"ImageIndex": image, "ControlModel": {"ModelCode": model}, **fields}


def refused(client, **params) -> str:
    with pytest.raises(errors.ClientError) as caught:
        client.call("GenerateImagesSDXL", **generation(**params))
    return caught.value.message


def test_list_controlnets_shows_usable_preprocessors_and_installed_models(controls):
    reply = controls.client().call("ListControlNets")
    pre, models = reply["PreProcessors"], reply["ControlModels"]
    assert pre["canny"]["InferenceParams"] == {"CannyLowThreshold": 100, "CannyHighThreshold": 200, "Resolution": 512}
    assert "none" in pre and "depth" not in pre  # MiDaS's annotator file is not installed
    canny = models["xl-canny"]
    assert canny["InferenceParams"] == {
        "ControlWeight": 1,
        "StartingStep": 0,
        "EndingStep": 1,
        "ControlMode": "Balanced",
        "ResizeMode": "ResizeAndFill",
    }
    assert (
        canny["Type"] == "ControlNet" and canny["PreProcessors"][0] == "canny" and canny["PreProcessors"][-1] == "none"
    )
    assert canny["BaseModel"] == "SDXL" and canny["CompatibleMainModels"] == ["fast-xl"]
    assert models["xl-depth-mid"]["InferenceParams"]["ControlWeight"] == 0.6
    assert (
        models["xl-union-promax"]["Type"] == "ControlNetUnion" and "canny" in models["xl-union-promax"]["PreProcessors"]
    )
    assert models["control_v11p_sd15_canny"]["BaseModel"] == "SD1"
    assert models["control_v11p_sd15_canny"]["CompatibleMainModels"] == []
    assert "xl-canny" in pre["canny"]["ControlModels"]


def test_units_are_checked_into_the_spec_with_their_defaults(controls):
    client = controls.client()
    uid = client.generate_images_sdxl(
        **generation(
            ImageAndMaskList=[image_b64(), image_b64(colour="black"), image_b64(colour="grey")],
            ControlNetList=[
                unit(PreProcessor={"ModelCode": "canny", "InferenceParams": {"CannyLowThreshold": 50}}, MaskIndex=1),
                unit("xl-depth-mid", image=2, InvertMask=True),
                unit(
                    "xl-canny",
                    image=0,
                    ControlModel={
                        "ModelCode": "xl-canny",
                        "InferenceParams": {
                            "StartingStep": 0.2,
                            "EndingStep": 0.8,
                            "ControlMode": "PromptMoreImportant",
                        },
                    },
                ),
            ],
            ReturnControlMaps=True,
        )
    )
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    spec = task.spec
    assert isinstance(spec, domain.GenerationSpec) and spec.return_control_maps
    first, second, third = spec.control_units
    assert first.preprocessor == "canny"
    assert first.preprocessor_params == {"CannyLowThreshold": 50, "CannyHighThreshold": 200, "Resolution": 512}
    assert (first.image_index, first.mask_index, first.weight) == (0, 1, 1.0)
    assert (second.image_index, second.invert_mask, second.weight, second.preprocessor) == (2, True, 0.6, "none")
    assert (third.image_index, third.start, third.end, third.control_mode) == (0, 0.2, 0.8, "PromptMoreImportant")
    assert len(spec.control_images) == 3 and not any(spec.control_images)  # stashed in the store while queued
    assert all(spec.control_images_keys) and spec.needs().controls == ("xl-canny", "xl-depth-mid")
    controls.run_worker(FakeEngine())
    assert client.wait(uid)["Status"] == "Finished"


def test_a_union_unit_takes_its_control_type_from_its_preprocessor_or_the_request(controls):
    client = controls.client()
    uid = client.generate_images_sdxl(
        **generation(
            ImageAndMaskList=[image_b64()],
            ControlNetList=[
                unit("xl-union-promax", PreProcessor={"ModelCode": "canny"}),
                {
                    "ImageIndex": 0,
                    "ControlModel": {"ModelCode": "xl-union-promax", "InferenceParams": {"ControlType": "depth"}},
                },
            ],
        )
    )
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    assert [(u.model_type, u.control_type) for u in task.spec.control_units] == [("union", "canny"), ("union", "depth")]


def test_a_chained_result_is_a_control_image(controls):
    client = controls.client()
    first = client.generate_images_sdxl(**generation())
    controls.run_worker(FakeEngine())
    uid = client.generate_images_sdxl(**generation(ImageAndMaskList=[f"task:{first}/0"], ControlNetList=[unit()]))
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    assert task.spec.control_units[0].image_index == 0 and task.spec.control_images_keys[0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ControlNetList": [unit()] * 4}, "ControlNetList: must hold at most 3 items (got 4)"),
        ({"ControlNetList": [unit(image=1)]}, "ControlNetList[0].ImageIndex 1 is out of range: ImageAndMaskList has 1"),
        ({"ControlNetList": [unit(MaskIndex=3)]}, "ControlNetList[0].MaskIndex 3 is out of range"),
        ({"ControlNetList": [unit(MaskIndex=0)]}, "ControlNetList[0].MaskIndex 0 is the ImageIndex"),
        (
            {"ControlNetList": [unit("nope")]},
            "ControlNetList[0].ControlModel.ModelCode 'nope' is not a ControlNet or IP-Adapter on this server",
        ),
        (
            {"ControlNetList": [unit("control_v11p_sd15_canny")]},
            "ControlNetList[0].ControlModel.ModelCode 'control_v11p_sd15_canny' (control_v11p_sd15_canny.safetensors) "
            "is an SD1 ControlNet and does not fit main model 'fast-xl'",
        ),
        (
            {"ControlNetList": [unit(PreProcessor={"ModelCode": "depth"})]},
            "ControlNetList[0].PreProcessor.ModelCode 'depth': ",
        ),
        (
            {"ControlNetList": [unit(PreProcessor={"ModelCode": "magic"})]},
            "ControlNetList[0].PreProcessor.ModelCode 'magic'",
        ),
        (
            {
                "ControlNetList": [
                    {
                        "ImageIndex": 0,
                        "ControlModel": {"ModelCode": "xl-canny", "InferenceParams": {"ControlWeight": 2.5}},
                    }
                ]
            },
            "ControlNetList[0].ControlModel.InferenceParams.ControlWeight: must be between 0 and 2 (got 2.5)",
        ),
        (
            {
                "ControlNetList": [
                    {"ImageIndex": 0, "ControlModel": {"ModelCode": "xl-canny", "InferenceParams": {"EndingStep": 1.5}}}
                ]
            },
            "ControlNetList[0].ControlModel.InferenceParams.EndingStep: must be between 0 and 1 (got 1.5)",
        ),
        (
            {
                "ControlNetList": [
                    {
                        "ImageIndex": 0,
                        "ControlModel": {
                            "ModelCode": "xl-canny",
                            "InferenceParams": {"StartingStep": 0.7, "EndingStep": 0.2},
                        },
                    }
                ]
            },
            "ControlNetList[0].ControlModel.InferenceParams.StartingStep 0.7 is after EndingStep 0.2",
        ),
        (
            {
                "ControlNetList": [
                    unit(PreProcessor={"ModelCode": "canny", "InferenceParams": {"CannyLowThreshold": 0}})
                ]
            },
            "ControlNetList[0].PreProcessor.InferenceParams.CannyLowThreshold: must be between 1 and 255 (got 0)",
        ),
        (
            {
                "ControlNetList": [
                    unit(
                        PreProcessor={
                            "ModelCode": "canny",
                            "InferenceParams": {"CannyLowThreshold": 200, "CannyHighThreshold": 100},
                        }
                    )
                ]
            },
            "CannyLowThreshold 200 is above CannyHighThreshold 100",
        ),
        ({"ControlNetList": [unit("xl-union-promax")]}, "is a ControlNet-Union model; name the control type"),
        (
            {
                "ControlNetList": [
                    unit(
                        "xl-union-promax",
                        PreProcessor={"ModelCode": "none"},
                        ControlModel={"ModelCode": "xl-union-promax", "InferenceParams": {"ControlType": "x-ray"}},
                    )
                ]
            },
            "ControlType: must be one of openpose, depth",
        ),
        (
            {
                "ControlNetList": [
                    unit(ControlModel={"ModelCode": "xl-canny", "InferenceParams": {"ControlType": "depth"}})
                ]
            },
            "'xl-canny' is not a ControlNet-Union model",
        ),
        (
            {"ControlNetList": [unit(), unit("xl-union-promax", PreProcessor={"ModelCode": "canny"})]},
            "ControlNetList: ControlNet-Union models and plain ControlNets cannot be used in one request",
        ),
        (
            {"ControlNetList": [unit()], "ImageAndMaskList": [image_b64(), image_b64()]},
            "ImageAndMaskList[1]: no index refers to this entry",
        ),
        ({"ControlNetList": [{"ImageIndex": 0}]}, "ControlNetList[0].ControlModel: missing required field"),
        ({"ControlNetList": [unit(InvertMask="yes")]}, "ControlNetList[0].InvertMask: must be a JSON bool"),
        ({"ReturnControlMaps": 1}, "ReturnControlMaps: must be a JSON bool"),
    ],
)
def test_refusals_name_the_field(controls, params, message):
    params.setdefault("ImageAndMaskList", [image_b64()])
    assert message in refused(controls.client(), **params)


# --- IP-Adapters: ControlNetList units, and ApplyReferenceStyle ------------------------------------------
@pytest.fixture
def styles(control_settings):
    root = control_settings.models_dir
    write_header(root / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors", SDXL_IP_ADAPTER_PLUS)
    (root / "image_encoder" / "vit-h").mkdir(parents=True)  # h94's models/image_encoder: its config is read
    (root / "image_encoder" / "vit-h" / "config.json").write_text(json.dumps(VIT_H))
    with open_stack(control_settings) as opened:
        yield opened


def test_an_ip_adapter_is_a_control_model_and_apply_reference_style_uses_it(styles):
    client = styles.client()
    listed = client.call("ListControlNets")["ControlModels"]["ip-adapter-plus_sdxl_vit-h"]
    assert listed["Type"] == "IPAdapter" and listed["PreProcessors"] == ["none"] and listed["ImageEncoder"] == "vit-h"
    uid = client.call(
        "ApplyReferenceStyle",
        MainModel={"ModelCode": "fast-xl"},
        PositivePrompts=["a watercolor"],
        ImageList=[image_b64(100, 60), image_b64(colour="red")],
        StyleReferStrength=0.7,
        TranslatePrompts=False,
    )["TaskUID"]
    [task] = styles.api.portal.call(styles.repo.get_many, [uid], client.public_key)
    spec = task.spec
    assert task.action == "ApplyReferenceStyle" and (spec.width, spec.height) == (96, 64)  # the raw image's, by 8
    assert spec.mode == "img2img" and spec.strength == 0.6 and spec.mask_image is None and spec.mask_image_key is None
    [style] = spec.control_units
    assert (style.model_type, style.model_code, style.weight, style.image_index) == (
        "ipadapter",
        "ip-adapter-plus_sdxl_vit-h",
        0.7,
        0,
    )
    styles.run_worker(FakeEngine())
    assert client.wait(uid)["Status"] == "Finished"


def test_reference_refusals_name_the_field(styles):
    client = styles.client()
    style = {"MainModel": {"ModelCode": "fast-xl"}, "ImageList": [image_b64(), image_b64()]}
    cases = [
        ({**style, "StyleImageIndex": 2}, "StyleImageIndex 2 is out of range: ImageList has 2 entries"),
        ({**style, "StyleModel": "xl-canny"}, "StyleModel 'xl-canny' is not an IP-Adapter on this server"),
        ({**style, "StyleReferStrength": 1.5}, "StyleReferStrength: must be between 0 and 1 (got 1.5)"),
        ({**style, "ImageList": []}, "ImageList: must hold 1 to 2 items (got 0)"),
    ]
    for params, message in cases:
        with pytest.raises(errors.ClientError) as caught:
            client.call("ApplyReferenceStyle", **params)
        assert message in caught.value.message, params
    ip = "ip-adapter-plus_sdxl_vit-h"
    masked = client.generate_images_sdxl(
        **generation(ImageAndMaskList=[image_b64(), image_b64(colour="black")], ControlNetList=[unit(ip, MaskIndex=1)])
    )
    assert masked  # a reference may have a mask: it acts where the mask is white
    for params, message in [
        (
            {"ControlNetList": [unit(ip, PreProcessor={"ModelCode": "canny"})]},
            "an IP-Adapter reads the reference image as it is",
        ),
    ]:
        params.setdefault("ImageAndMaskList", [image_b64()])
        assert message in refused(client, **params)


def test_apply_reference_style_without_an_ip_adapter_says_what_to_install(controls):
    with pytest.raises(errors.ClientError) as caught:
        controls.client().call("ApplyReferenceStyle", MainModel={"ModelCode": "fast-xl"}, ImageList=[image_b64()] * 2)
    assert "ApplyReferenceStyle needs an IP-Adapter: put an SDXL IP-Adapter" in caught.value.message


def test_listed_entries_are_passed_unchanged(controls):
    client = controls.client()
    listed = client.call("ListControlNets")
    entry = {
        "ImageIndex": 0,
        "PreProcessor": listed["PreProcessors"]["canny"],
        "ControlModel": listed["ControlModels"]["xl-canny"],
    }
    uid = client.generate_images_sdxl(**generation(ImageAndMaskList=[image_b64()], ControlNetList=[entry]))
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    assert task.spec.control_units[0].preprocessor == "canny" and task.spec.control_units[0].weight == 1.0


def test_the_memory_check_counts_the_control_models(control_settings):
    from picserve import catalog as catalog_module
    from picserve.specs import generation as generation_kind

    root = control_settings.models_dir
    # a ControlNet of 600 M parameters (1.2 GB in fp16): its header says so, no weights behind it
    write_header(
        root / "controlnet" / "xl-big.safetensors", {**SDXL_CONTROLNET, "down_blocks.0.big.weight": (600_000, 1000)}
    )
    catalog = catalog_module.Catalog(root, ttl=0)
    spec = domain.GenerationSpec(model_code="fast-xl", prompt="x", width=1024, height=1024)
    guided = spec.evolve(control_units=(domain.ControlUnit(model_code="xl-big"),))
    workers = [("cuda", 5 * 1024**3)]  # 1024² needs about 4.5 GiB with no weights, the ControlNet adds 1.2 GB
    generation_kind.check_memory(spec, workers, catalog)
    with pytest.raises(errors.ParamError, match="Width/Height: 1024×1024 needs about"):
        generation_kind.check_memory(guided, workers, catalog)


def test_picserve_restyle_queues_an_apply_reference_style(styles, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from picserve import cli
    from picserve.sdk import Client

    class Shared(Client):
        def close(self) -> None:  # the app's TestClient stays open
            pass

    monkeypatch.setattr(
        "picserve.sdk.Client", lambda url, public, private, **_: Shared(url, public, private, http=styles.api)
    )
    account = styles.api.portal.call(styles.repo.create_key, "cli", 100_000)
    raw, style = tmp_path / "raw.png", tmp_path / "style.png"
    Image.new("RGB", (120, 80), "teal").save(raw)
    Image.new("RGB", (64, 64), "orange").save(style)
    keys = ["--url", "http://testserver", "--public-key", account.public_key, "--private-key", account.private_key]
    args = ["restyle", str(raw), str(style), "--model", "fast-xl", "--strength", "0.8", "--prompt", "a boat"]
    result = CliRunner().invoke(cli.app, [*args, "--no-wait", *keys])
    assert result.exit_code == 0, result.output
    [task] = styles.api.portal.call(styles.repo.get_many, [result.stdout.strip()], account.public_key)
    assert task.action == "ApplyReferenceStyle" and (task.spec.width, task.spec.height) == (120, 80)
    assert task.spec.control_units[0].weight == 0.8 and task.spec.prompt == "a boat"
    refused = CliRunner().invoke(cli.app, [*args[:3], "--model", "fast-xl", "--strength", "2", *keys])
    assert refused.exit_code == 2 and "--strength" in refused.output

"""The SDK's ControlNet surface: `control_unit` builds the wire's unit, `generate_images_sdxl` sends
ControlNetList and ReturnControlMaps signed as the server verifies and gets the TaskUID, the TypedDicts
are the wire models, and `list_controlnets` returns ListControlNets typed.

The fast tier: a MockTransport for the bodies, the in-process picserve with header-only control models
(tests/api/test_controlnet.py's fixture) for what the server makes of them.
"""

from __future__ import annotations

import base64
import json
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from picserve import domain, preprocessors
from picserve.api import openapi
from picserve.protocol import messages, signature
from picserve.sdk import control_unit, image_data, task_image
from picserve.sdk import types as sdk_types
from picserve.specs.controlnet import UNION_TYPES
from tests.api.conftest import Stack, open_stack, own_fields, recording, request
from tests.api.test_controlnet import SD1_CONTROLNET, SDXL_CONTROLNET, SDXL_UNION, image_b64
from tests.headers import write_header

UID = "ckti5nf2h4keq8mr9n00"


def install_control_models(root: Path) -> None:
    """tests/api/test_controlnet.py's header-only control models: two SDXL ControlNets (one with a sidecar
    weight), a ControlNet-Union and an SD1 ControlNet."""
    write_header(root / "controlnet" / "xl-canny.safetensors", SDXL_CONTROLNET)
    write_header(root / "controlnet" / "xl-depth-mid.safetensors", SDXL_CONTROLNET)
    (root / "controlnet" / "xl-depth-mid.json").write_text(json.dumps({"InferenceParams": {"ControlWeight": 0.6}}))
    write_header(root / "controlnet" / "xl-union-promax.safetensors", SDXL_UNION)
    write_header(root / "controlnet" / "control_v11p_sd15_canny.safetensors", SD1_CONTROLNET)


@pytest.fixture
def controls(settings) -> Iterator[Stack]:
    install_control_models(settings.models_dir)
    with open_stack(settings) as opened:
        yield opened


# --- control_unit: the wire's unit, only what was given ------------------------------------------------


def test_control_unit_sends_only_what_is_given():
    assert control_unit("xl-canny", 0) == {"ImageIndex": 0, "ControlModel": {"ModelCode": "xl-canny"}}
    unit = control_unit(
        "xl-canny",
        2,
        "canny",
        mask_index=3,
        invert_mask=True,
        weight=0.8,
        start=0.1,
        end=0.9,
        mode="ControlNetMoreImportant",
        resize_mode="CropAndResize",
        CannyLowThreshold=50,
        CannyHighThreshold=150,
        Resolution=768,
    )
    assert unit == {
        "ImageIndex": 2,
        "MaskIndex": 3,
        "InvertMask": True,
        "PreProcessor": {
            "ModelCode": "canny",
            "InferenceParams": {"CannyLowThreshold": 50, "CannyHighThreshold": 150, "Resolution": 768},
        },
        "ControlModel": {
            "ModelCode": "xl-canny",
            "InferenceParams": {
                "ControlWeight": 0.8,
                "StartingStep": 0.1,
                "EndingStep": 0.9,
                "ControlMode": "ControlNetMoreImportant",
                "ResizeMode": "CropAndResize",
            },
        },
    }
    union = control_unit("xl-union-promax", 0, control_type="depth", weight=0)  # 0 is given, not left out
    assert union["ControlModel"] == {
        "ModelCode": "xl-union-promax",
        "InferenceParams": {"ControlWeight": 0, "ControlType": "depth"},
    }
    for built in (unit, union):
        messages.ControlNet.model_validate(built)  # what the server parses a unit with


def test_control_unit_takes_list_controlnets_entries_by_their_model_code():
    model = {"Name": "XL Canny", "ModelCode": "xl-canny", "InferenceParams": {"ControlWeight": 1}, "Type": "ControlNet"}
    pre = {"Name": "Hard Edge", "ModelCode": "canny", "ControlType": "canny", "ControlModels": ["xl-canny"]}
    unit = control_unit(model, 0, pre, CannyLowThreshold=80)
    assert unit == {
        "ImageIndex": 0,
        "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"CannyLowThreshold": 80}},
        "ControlModel": {"ModelCode": "xl-canny"},
    }


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: control_unit("m", -1), ValueError, "image_index must be an ImageAndMaskList index >= 0, got -1"),
        (lambda: control_unit("m", True), ValueError, "image_index must be"),
        (lambda: control_unit("m", 0, mask_index=0), ValueError, "mask_index 0 is image_index"),
        (lambda: control_unit("m", 0, CannyLowThreshold=50), ValueError, "name the preprocessor"),
        (lambda: control_unit("m", 0, "canny", Threshold=5), TypeError, "unknown preprocessor parameter 'Threshold'"),
        (lambda: control_unit("", 0), ValueError, "model must be a ModelCode or a ListControlNets entry"),
        (lambda: control_unit({"Name": "x"}, 0), ValueError, "model must be a ModelCode"),
        (lambda: control_unit("m", 0, {"Name": "canny"}), ValueError, "preprocessor must be a ModelCode"),
    ],
)
def test_control_unit_refuses_what_cannot_be_a_unit(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- GenerateImagesSDXL with units: the body sent -------------------------------------------------------


def test_generate_sends_the_units_and_the_images_signed_and_returns_the_task_uid():
    client, sent = recording()
    pose = image_data(base64.b64decode(image_b64()))
    images = [pose, task_image(UID), "data:image/png;base64,iVBORw0KGgo="]
    units = [
        control_unit("xl-openpose", 0, "openpose", weight=0.7),
        control_unit("xl-canny", 1, "canny", mask_index=2, end=0.6, mode="PromptMoreImportant", CannyLowThreshold=60),
    ]
    uid = client.generate_images_sdxl(
        MainModel={"ModelCode": "sdxl-base"},
        PositivePrompts=["a dancer"],
        ImageAndMaskList=images,
        ControlNetList=units,
        ReturnControlMaps=True,
    )
    assert uid == "t1"
    (body,) = sent
    assert body["Action"] == "GenerateImagesSDXL" and signature.verify(body, "priv")
    assert own_fields(body) == {
        "MainModel": {"ModelCode": "sdxl-base"},
        "PositivePrompts": ["a dancer"],
        "ImageAndMaskList": images,
        "ControlNetList": [
            {
                "ImageIndex": 0,
                "PreProcessor": {"ModelCode": "openpose"},
                "ControlModel": {"ModelCode": "xl-openpose", "InferenceParams": {"ControlWeight": 0.7}},
            },
            {
                "ImageIndex": 1,
                "MaskIndex": 2,
                "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"CannyLowThreshold": 60}},
                "ControlModel": {
                    "ModelCode": "xl-canny",
                    "InferenceParams": {"EndingStep": 0.6, "ControlMode": "PromptMoreImportant"},
                },
            },
        ],
        "ReturnControlMaps": True,
    }
    messages.GenerateImagesSDXL.model_validate(own_fields(body))


# --- the TypedDicts are the wire models ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "model"),
    [
        (sdk_types.ControlNet, messages.ControlNet),
        (sdk_types.PreProcessor, messages.PreProcessorModel),
        (sdk_types.ControlModel, messages.ControlModelModel),
    ],
)
def test_the_unit_shapes_are_the_wire_models(shape, model):
    """Every field of the wire model, no other, and required exactly where the server requires it."""
    hints = typing.get_type_hints(shape, include_extras=True)
    assert set(hints) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert {name for name, hint in hints.items() if typing.get_origin(hint) is not typing.NotRequired} == required


def test_the_new_generation_fields_and_inference_params_are_the_wires():
    generation = typing.get_type_hints(sdk_types.GenerateImagesSDXLParams)
    assert {"ControlNetList", "ReturnControlMaps"} <= set(generation) <= set(messages.GenerateImagesSDXL.model_fields)
    params = set(typing.get_type_hints(sdk_types.InferenceParams))
    control = {"ControlWeight", "StartingStep", "EndingStep", "ControlMode", "ResizeMode", "ControlType"}
    preprocessor = {"CannyLowThreshold", "CannyHighThreshold", "Resolution"}
    assert (
        control | preprocessor <= params <= set(messages.InferenceParamsModel.model_fields) | set(preprocessors.PARAMS)
    )
    # a preprocessor's: PICPIK's three and A1111's other sliders, as the server's table types them
    pre_params = typing.get_type_hints(sdk_types.PreProcessorParams)
    assert preprocessor <= set(pre_params) and set(pre_params) == set(preprocessors.PARAMS)
    assert pre_params == {name: param.kind for name, param in preprocessors.PARAMS.items()}
    assert set(pre_params) <= params
    # the Literals name exactly what the server takes
    assert typing.get_args(sdk_types.ControlModeName) == messages.CONTROL_MODES
    assert typing.get_args(sdk_types.ControlTypeName) == UNION_TYPES
    for value in typing.get_args(sdk_types.ResizeModeName):
        messages.InferenceParamsModel.model_validate({"ResizeMode": value})


# --- against the in-process picserve ------------------------------------------------------------------


def test_list_controlnets_is_typed_and_matches_the_reply_schema(controls):
    reply = controls.client().list_controlnets()
    assert set(reply) == {"PreProcessors", "ControlModels"}  # the envelope left out
    entry_keys = set(typing.get_type_hints(sdk_types.PreProcessorInfo))
    for code, pre in reply["PreProcessors"].items():
        assert pre["ModelCode"] == code and set(pre) <= entry_keys, set(pre) - entry_keys
    model_keys = set(typing.get_type_hints(sdk_types.ControlModelInfo))
    for code, model in reply["ControlModels"].items():
        assert model["ModelCode"] == code and set(model) <= model_keys, set(model) - model_keys
    canny = reply["ControlModels"]["xl-canny"]
    assert canny["InferenceParams"]["ControlMode"] == "Balanced" and canny.get("PreProcessors", [])[0] == "canny"
    assert reply["ControlModels"]["xl-union-promax"].get("Type") == "ControlNetUnion"
    assert reply["PreProcessors"]["canny"]["InferenceParams"]["CannyLowThreshold"] == 100
    # /openapi.json's reply schema (made from these TypedDicts) takes the whole reply, envelope and all
    document = openapi.document()
    schema = {"$ref": "#/components/schemas/ListControlNetsReply", "components": document["components"]}
    answer = {"Action": "ListControlNets", "RetCode": 0, "Message": "", **reply}
    assert list(Draft202012Validator(schema).iter_errors(answer)) == []


def test_list_controlnets_entries_make_units_the_server_takes(controls):
    client = controls.client()
    listed = client.list_controlnets()
    unit = control_unit(listed["ControlModels"]["xl-canny"], 0, listed["PreProcessors"]["canny"], Resolution=256)
    uid = client.generate_images_sdxl(**request(ImageAndMaskList=[image_b64()], ControlNetList=[unit]))
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    (queued,) = task.spec.control_units
    assert (queued.model_code, queued.preprocessor, queued.preprocessor_params["Resolution"]) == (
        "xl-canny",
        "canny",
        256,
    )


def test_units_built_by_the_sdk_are_queued_as_the_spec_the_server_checks(controls):
    client = controls.client()
    uid = client.generate_images_sdxl(
        **request(
            ImageAndMaskList=[image_b64(), image_b64(colour="black"), image_b64(colour="grey")],
            ControlNetList=[
                control_unit(
                    "xl-canny", 0, "canny", mask_index=1, invert_mask=True, weight=0.5, CannyHighThreshold=180
                ),
                control_unit("xl-depth-mid", 2, start=0.25, mode="ControlNetMoreImportant", resize_mode="JustResize"),
            ],
            ReturnControlMaps=True,
        )
    )
    assert isinstance(uid, str) and uid
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    spec = task.spec
    assert isinstance(spec, domain.GenerationSpec) and spec.return_control_maps
    canny, depth = spec.control_units
    assert (canny.model_code, canny.preprocessor, canny.image_index, canny.mask_index) == ("xl-canny", "canny", 0, 1)
    assert (canny.invert_mask, canny.weight) == (True, 0.5)
    assert canny.preprocessor_params == {"CannyLowThreshold": 100, "CannyHighThreshold": 180, "Resolution": 512}
    assert (depth.model_code, depth.preprocessor, depth.weight, depth.start) == ("xl-depth-mid", "none", 0.6, 0.25)
    assert (depth.control_mode, depth.resize_mode) == ("ControlNetMoreImportant", "JustResize")


def test_a_union_unit_and_a_chained_control_image(controls):
    client = controls.client()
    first = client.generate_images_sdxl(**request())
    controls.run_worker()
    uid = client.generate_images_sdxl(
        **request(
            ImageAndMaskList=[task_image(first)],
            ControlNetList=[control_unit("xl-union-promax", 0, control_type="tile")],
        )
    )
    [task] = controls.api.portal.call(controls.repo.get_many, [uid], client.public_key)
    (unit,) = task.spec.control_units
    assert (unit.model_type, unit.control_type, unit.preprocessor) == ("union", "tile", "none")

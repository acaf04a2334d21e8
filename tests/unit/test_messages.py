"""Every invalid GenerateImagesSDXL field is refused with a message naming the field and its range."""

import pytest

from picserve import errors
from picserve.protocol import messages

BASE = {"MainModel": {"ModelCode": "m"}}


def refuse(params) -> str:
    with pytest.raises(errors.ParamError) as info:
        messages.parse(messages.GenerateImagesSDXL, params)
    assert info.value.ret_code == 160
    return info.value.message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("Width", 63, "Width: must be between 64 and 2560 (got 63)"),
        ("Width", 2561, "Width: must be between 64 and 2560 (got 2561)"),
        ("Height", 0, "Height: must be between 64 and 2560 (got 0)"),
        ("BatchSize", 17, "BatchSize: must be between 1 and 16 (got 17)"),
        ("BatchSize", 0, "BatchSize: must be between 1 and 16 (got 0)"),
        ("Seed", -2, "Seed: must be between -1 and 2147483647 (got -2)"),
        ("Seed", 2**31, "Seed: must be between -1 and 2147483647 (got 2147483648)"),
        ("Width", "wide", "Width: Input should be a valid integer"),
        ("PositivePrompts", "a cat", "PositivePrompts: Input should be a valid list"),
        ("Tiling", "maybe", "Tiling: Input should be a valid boolean"),
        ("Unknown", 1, "Unknown: unknown field for GenerateImagesSDXL"),
        ("ControlNetList", [], "ControlNetList: unknown field for GenerateImagesSDXL"),
    ],
)
def test_top_level_fields(field, value, expected):
    assert refuse({**BASE, field: value}).startswith(expected)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"Steps": 5}, "MainModel.InferenceParams.Steps: must be between 6 and 100 (got 5)"),
        ({"Steps": 101}, "MainModel.InferenceParams.Steps: must be between 6 and 100 (got 101)"),
        ({"CFGScale": 0.5}, "MainModel.InferenceParams.CFGScale: must be between 1 and 30 (got 0.5)"),
        ({"CFGScale": 31}, "MainModel.InferenceParams.CFGScale: must be between 1 and 30 (got 31)"),
        ({"ClipSkip": 0}, "MainModel.InferenceParams.ClipSkip: must be between 1 and 12 (got 0)"),
        ({"ClipSkip": 13}, "MainModel.InferenceParams.ClipSkip: must be between 1 and 12 (got 13)"),
    ],
)
def test_inference_params(params, expected):
    assert refuse({"MainModel": {"ModelCode": "m", "InferenceParams": params}}) == expected


def test_nested_list_and_enum_fields():
    assert refuse({**BASE, "SubModelList": [{"ModelCode": "l", "InferenceParams": {"LoraWeight": 2.5}}]}) == (
        "SubModelList[0].InferenceParams.LoraWeight: must be between -1 and 2 (got 2.5)"
    )
    assert refuse({**BASE, "Image2Image": {"ImageIndex": 0, "ReferStrength": 1.5}}) == (
        "Image2Image.ReferStrength: must be between 0 and 1 (got 1.5)"
    )
    assert refuse({**BASE, "Image2Image": {"ImageIndex": 0, "ResizeMode": "Stretch"}}) == (
        "Image2Image.ResizeMode: must be one of JustResize, CropAndResize, ResizeAndFill (got 'Stretch')"
    )


def test_missing_main_model_and_model_code():
    assert refuse({}) == "MainModel: missing required field"
    assert refuse({"MainModel": {}}) == "MainModel.ModelCode: missing required field"


def test_inference_params_is_an_open_map():
    parsed = messages.parse(
        messages.GenerateImagesSDXL, {"MainModel": {"ModelCode": "m", "InferenceParams": {"Future": 1, "Steps": 20}}}
    )
    assert parsed.MainModel.InferenceParams.Steps == 20


def test_defaults_follow_the_spec():
    parsed = messages.parse(messages.GenerateImagesSDXL, BASE)
    assert (parsed.Width, parsed.Height, parsed.BatchSize, parsed.Seed) == (1024, 1024, 1, -1)
    assert parsed.TranslatePrompts is True and parsed.Tiling is False


def test_task_detail_keeps_the_spec_spelling():
    detail = messages.TaskDetail(TaskUID="x", Action="GenerateImagesSDXL", Status="Finished").model_dump()
    assert "ErrorMassage" in detail and "ErrorMessage" not in detail

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
        ("Width", "wide", 'Width: must be a JSON integer (a number with no fractional part), got the string "wide"'),
        ("PositivePrompts", "a cat", 'PositivePrompts: must be a JSON array, got the string "a cat"'),
        ("Tiling", "maybe", 'Tiling: must be a JSON bool (true or false), got the string "maybe"'),
        ("Unknown", 1, "Unknown: unknown field for GenerateImagesSDXL (known: MainModel, SubModelList,"),
        ("ControlNetList", [{}] * 4, "ControlNetList: must hold at most 3 items (got 4)"),
    ],
)
def test_top_level_fields(field, value, expected):
    assert refuse({**BASE, field: value}).startswith(expected)


# --- strict wire types: spec sections 1, 4 and 5 ---------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"Tiling": "true"}, 'Tiling: must be a JSON bool (true or false), got the string "true"'),
        ({"TranslatePrompts": "yes"}, 'TranslatePrompts: must be a JSON bool (true or false), got the string "yes"'),
        ({"Tiling": 1}, "Tiling: must be a JSON bool (true or false), got the number 1"),
        ({"TranslatePrompts": None}, "TranslatePrompts: must be a JSON bool (true or false), got null"),
        ({"Width": True}, "Width: must be a JSON integer (a number with no fractional part), got the bool true"),
        ({"Width": 64.5}, "Width: must be a JSON integer (a number with no fractional part), got the number 64.5"),
        ({"Seed": "1"}, 'Seed: must be a JSON integer (a number with no fractional part), got the string "1"'),
        ({"Width": [64]}, "Width: must be a JSON integer (a number with no fractional part), got an array of 1 item"),
        ({"PositivePrompts": [1]}, "PositivePrompts[0]: must be a JSON string, got the number 1"),
        ({"NegativePrompts": [None]}, "NegativePrompts[0]: must be a JSON string, got null"),
        ({"ImageAndMaskList": {"0": "x"}}, "ImageAndMaskList: must be a JSON array, got an object"),
        ({"MainModel": {"ModelCode": 5}}, "MainModel.ModelCode: must be a JSON string, got the number 5"),
        ({"MainModel": "m"}, 'MainModel: must be a JSON object, got the string "m"'),
        ({"MainModel": {"ModelCode": "m", "IsOfficial": "no"}}, "MainModel.IsOfficial: must be a JSON bool"),
        ({"MainModel": {"ModelCode": "m", "TriggerWordList": "w"}}, "MainModel.TriggerWordList: must be a JSON array"),
        ({"Image2Image": {"ImageIndex": "0"}}, "Image2Image.ImageIndex: must be a JSON integer"),
        (
            {"Image2Image": {"ImageIndex": 0, "ReferStrength": False}},
            "Image2Image.ReferStrength: must be a JSON number",
        ),
        ({"Image2Image": {"ImageIndex": 0, "Extra": 1}}, "Image2Image.Extra: unknown field for Image2Image (known: "),
    ],
)
def test_wrong_types_are_refused_naming_field_type_and_value(fields, expected):
    assert refuse({**BASE, **fields}).startswith(expected)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"CFGScale": True}, "MainModel.InferenceParams.CFGScale: must be a JSON number, got the bool true"),
        ({"CFGScale": "7"}, 'MainModel.InferenceParams.CFGScale: must be a JSON number, got the string "7"'),
        ({"Steps": 6.5}, "MainModel.InferenceParams.Steps: must be a JSON integer"),
        ({"Sampler": 1}, "MainModel.InferenceParams.Sampler: must be a JSON string, got the number 1"),
        ({"ControlWeight": "1"}, "MainModel.InferenceParams.ControlWeight: must be a JSON number"),
        ({"Resolution": 512.5}, "MainModel.InferenceParams.Resolution: must be a JSON integer"),
        ({"StartingStep": 2}, "MainModel.InferenceParams.StartingStep: must be between 0 and 1 (got 2)"),
    ],
)
def test_known_inference_params_are_typed(params, expected):
    assert refuse({"MainModel": {"ModelCode": "m", "InferenceParams": params}}).startswith(expected)


def test_an_integral_float_is_an_int_and_an_int_is_a_float():
    # the signature writes 64.0 and 64 alike: both are the Int 64; 7 is a fine Float
    parsed = messages.parse(
        messages.GenerateImagesSDXL,
        {"MainModel": {"ModelCode": "m", "InferenceParams": {"Steps": 20.0, "CFGScale": 7}}, "Width": 64.0},
    )
    assert parsed.Width == 64 and type(parsed.Width) is int
    assert parsed.MainModel.InferenceParams.Steps == 20 and type(parsed.MainModel.InferenceParams.Steps) is int
    assert parsed.MainModel.InferenceParams.CFGScale == 7.0


def test_indexes_are_zero_or_more():
    assert refuse({**BASE, "Image2Image": {"ImageIndex": -1}}) == "Image2Image.ImageIndex: must be at least 0 (got -1)"
    assert refuse({**BASE, "Image2Image": {"ImageIndex": 0, "MaskIndex": -3}}) == (
        "Image2Image.MaskIndex: must be at least 0 (got -3)"
    )


def test_huge_values_are_named_briefly():
    message = refuse({**BASE, "Seed": 10**300})
    assert message.startswith("Seed: must be between -1 and 2147483647 (got 100000000000… (301 digits))")
    message = refuse({**BASE, "Width": "w" * 10_000_000})
    assert len(message) < 300 and "(10000000 characters)" in message
    message = refuse({**BASE, "k" * 100_000: 1})
    assert len(message) < 500 and "unknown field" in message
    assert refuse({**BASE, "MainModel": {"ModelCode": "m" * 256}}) == (
        "MainModel.ModelCode: must be at most 255 characters (got 256 characters)"
    )
    assert refuse({**BASE, "MainModel": {"ModelCode": ""}}) == "MainModel.ModelCode: must not be empty"


@pytest.mark.parametrize("model", [messages.ListTasksDetails, messages.CancelTask])
def test_task_uid_lists(model):
    def refused(params):
        with pytest.raises(errors.ParamError) as info:
            messages.parse(model, params)
        return info.value.message

    assert refused({"TaskUIDList": []}) == "TaskUIDList: must hold 1 to 100 items (got 0)"
    assert refused({"TaskUIDList": ["a"] * 101}) == "TaskUIDList: must hold 1 to 100 items (got 101)"
    assert refused({"TaskUIDList": "abc"}) == 'TaskUIDList: must be a JSON array, got the string "abc"'
    assert refused({"TaskUIDList": [20]}) == "TaskUIDList[0]: must be a JSON string, got the number 20"
    assert refused({"TaskUIDList": ["x" * 65]}) == "TaskUIDList[0]: must be at most 64 characters (got 65 characters)"
    assert refused({}) == "TaskUIDList: missing required field"


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

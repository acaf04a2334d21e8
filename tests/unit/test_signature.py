import hashlib

import pytest

from picserve.protocol import signature

PRIVATE = "123456"

VECTORS = [
    (
        {"Action": "ListModels", "PublicKey": "abcdefg"},
        "ActionListModelsPublicKeyabcdefg",
        "4a20bc1141494035f6aaaad13224c94c5a8bc3a5",
    ),
    (
        {"Action": "StartPicpikApp", "PublicKey": "abcdefg", "AppId": "your_app_id"},
        "ActionStartPicpikAppAppIdyour_app_idPublicKeyabcdefg",
        "c5e65ad1936ff695436917bf807d2281db33e7a3",
    ),
    (
        {
            "Action": "GenerateImages",
            "PublicKey": "abcdefg",
            "request_uuid": "b91fcfbe-bb35-47ce-a168-bd6252c75270",
            "MainModel": {"ModelCode": "abc123", "InferenceParams": {"Steps": 20, "CFGScale": 7.0, "Sampler": "Euler"}},
            "PositivePrompts": ["a cat", "sunset"],
            "TranslatePrompts": True,
            "Width": 512,
            "Height": 768,
            "BatchSize": 1,
            "Seed": -1,
        },
        "ActionGenerateImagesBatchSize1Height768MainModelInferenceParamsCFGScale7SamplerEulerSteps20ModelCodeabc123"
        "PositivePromptsa catsunsetPublicKeyabcdefgSeed-1TranslatePromptstrueWidth512"
        "request_uuidb91fcfbe-bb35-47ce-a168-bd6252c75270",
        "c792b9a08ef46e53de9d072284388a11a855cb1b",
    ),
    (
        {"Action": "ListTasksDetails", "PublicKey": "abcdefg", "TaskUIDList": ["ckti5nf2h4keq8mr9n00"]},
        "ActionListTasksDetailsPublicKeyabcdefgTaskUIDListckti5nf2h4keq8mr9n00",
        "09ad0341679ed6fae9a62ecdb73589d9b22c6a0c",
    ),
]


@pytest.mark.parametrize(("params", "text", "expected"), VECTORS)
def test_spec_vectors(params, text, expected):
    assert signature.string_to_sign(params) == text
    assert signature.sign(params, PRIVATE) == expected
    assert signature.verify({**params, "Signature": expected}, PRIVATE)


def _independent_sign(params: dict, private_key: str) -> str:
    """The spec's pseudocode, written again without picserve's code."""

    def enc(v):
        if v is True or v is False:
            return "true" if v else "false"
        if v is None:
            return ""
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() else f"{v:.15f}".rstrip("0")
        if isinstance(v, dict):
            return "".join(k + enc(v[k]) for k in sorted(v))
        if isinstance(v, list):
            return "".join(enc(x) for x in v)
        return str(v)

    text = "".join(k + enc(params[k]) for k in sorted(params) if k != "Signature") + private_key
    return hashlib.sha1(text.encode()).hexdigest()


def test_independent_signer_agrees():
    params = {
        "Action": "GenerateImagesSDXL",
        "PublicKey": "pk",
        "request_uuid": "u",
        "MainModel": {"ModelCode": "m", "InferenceParams": {"CFGScale": 7.5, "Steps": 20}},
        "PositivePrompts": ["猫", "a (cat:1.2)"],
        "Seed": 42,
        "Tiling": False,
        "SubModelList": [],
        "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.35},
        "NegativePrompts": None,
    }
    assert signature.sign(params, "secret") == _independent_sign(params, "secret")


def test_floats_never_in_exponent_form():
    assert signature.encode(0.00001) == "0.00001"
    assert signature.encode(7.0) == "7"
    assert signature.encode(1e20) == "100000000000000000000"


def test_vendor_python_float_rendering_is_accepted():
    params = {"Action": "X", "PublicKey": "pk", "CFGScale": 0.00001}
    vendor = hashlib.sha1(("ActionXCFGScale1e-05PublicKeypk" + PRIVATE).encode()).hexdigest()
    assert signature.verify({**params, "Signature": vendor}, PRIVATE)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.update(Seed=2),
        lambda b: b.update(Signature="0" * 40),
        lambda b: b.pop("Signature"),
        lambda b: b.update(Extra="x"),
    ],
)
def test_tampered_requests_fail(tamper):
    body = {"Action": "GenerateImagesSDXL", "PublicKey": "pk", "Seed": 1}
    body["Signature"] = signature.sign(body, PRIVATE)
    tamper(body)
    assert not signature.verify(body, PRIVATE)


def test_wrong_key_fails():
    body = {"Action": "ListModels", "PublicKey": "pk"}
    body["Signature"] = signature.sign(body, "other")
    assert not signature.verify(body, PRIVATE)

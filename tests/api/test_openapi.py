"""/openapi.json describes what the server validates and sends; /docs shows it without leaving the server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from picserve.api import openapi
from picserve.api.actions import ACTIONS
from picserve.config import Settings
from picserve.protocol import signature
from picserve.protocol.envelope import COMMON_FIELDS
from picserve.sdk import Client, control_unit, hires_fix, masked_edit, task_image
from tests.api.conftest import MODEL, open_stack, request

#: the actions of the spec's generation 2 that picserve serves, and picserve's own
SPEC_ACTIONS = {
    *("GenerateImagesSDXL", "ListModels", "ListControlNets", "ListTasksDetails", "ListRunningTasks"),
    "GetCreditBalance",
    *("ResizeImage", "RemoveBackground", "RemoveBackgroundsInBatch", "ApplyReferenceStyle"),
    *("ModifyMaskedPixels", "RemoveContents"),
    *("RestoreFaces", "ExtractContents", "DescribeImages", "GenerateBackgrounds"),
}
EXTENSION_ACTIONS = {"CancelTask", "ImportModel"}
#: the actions whose reply is a TaskUID
TASK_ACTIONS = {
    "GenerateImagesSDXL",
    "ApplyReferenceStyle",
    "ResizeImage",
    "RemoveBackground",
    "RemoveBackgroundsInBatch",
    "ModifyMaskedPixels",
    "RemoveContents",
    "RestoreFaces",
    "ExtractContents",
    "DescribeImages",
    "GenerateBackgrounds",
    "ImportModel",
}
#: GenerateImagesSDXL's fields as the spec lists them: §1.1 (common), §5 without UseMainModelVAE, §6.4
SPEC_GENERATE_FIELDS = {
    *("Action", "PublicKey", "Signature", "request_uuid"),
    *("MainModel", "SubModelList", "PositivePrompts", "NegativePrompts", "TranslatePrompts"),
    *("Seed", "Width", "Height", "BatchSize"),
    *("Image2Image", "Tiling", "ImageAndMaskList"),
}
SPEC = Path("/work/shared/spec/picpik-api.md")


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict[str, Any]:
    """The document as served, fetched once for the module (it depends on no request or model); a test
    that changes it works on a copy."""
    root = tmp_path_factory.mktemp("openapi")
    with open_stack(Settings(data_dir=root / "data", models_dir=root / "models", device="cpu")) as stack:
        response = stack.api.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `document`."""
    return Draft202012Validator({**schema, "components": document["components"]})


def body_schema(document: dict[str, Any]) -> dict[str, Any]:
    return document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def reply_schema(document: dict[str, Any]) -> dict[str, Any]:
    return document["paths"]["/"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_1_and_replaces_fastapis_own(stack, document):
    validate(document)
    assert document["openapi"].startswith("3.1.")
    assert stack.api.app.openapi_url is None  # FastAPI's generated document is off: this one is served instead
    assert list(document["paths"]["/"]) == ["post"]


def test_every_action_is_in_the_body_union_discriminated_by_action(document):
    schema = body_schema(document)
    mapping = schema["discriminator"]["mapping"]
    assert schema["discriminator"]["propertyName"] == "Action"
    assert set(mapping) == set(ACTIONS) == SPEC_ACTIONS | EXTENSION_ACTIONS
    assert sorted(ref["$ref"] for ref in schema["oneOf"]) == sorted(mapping.values())
    for action, ref in mapping.items():
        request_schema = component(document, ref.rsplit("/", 1)[1])
        assert request_schema["properties"]["Action"]["const"] == action
        assert {"Action", "PublicKey", "Signature"} <= set(request_schema["required"])


@pytest.mark.parametrize("action", sorted(openapi.REQUESTS))
def test_every_field_of_the_request_model_and_the_envelope_is_in_the_schema(document, action):
    properties = component(document, f"{action}Request")["properties"]
    assert set(properties) == set(openapi.REQUESTS[action].model_fields) | set(COMMON_FIELDS)


def test_generate_images_sdxl_has_every_field_the_spec_lists(document):
    properties = component(document, "GenerateImagesSDXLRequest")["properties"]
    assert SPEC_GENERATE_FIELDS <= set(properties), SPEC_GENERATE_FIELDS - set(properties)
    image2image = component(document, "Image2ImageModel")["properties"]
    assert {"ImageIndex", "ReferStrength", "ResizeMode"} <= set(image2image)  # §4.3, less GenerateBackgrounds'


@pytest.mark.skipif(not SPEC.exists(), reason="the spec is not in this checkout")
def test_the_listed_fields_are_the_specs():
    text = SPEC.read_text()
    common = _table_fields(_section(text, "### 1.1 ", "### 1.2 "))
    base = _table_fields(_section(text, "## 5. ", "## 6. ")) - {"UseMainModelVAE"}  # "not in GenerateImagesSDXL"
    own = _table_fields(_section(text, "### 6.4 GenerateImagesSDXL", "### 6.5 "))
    assert common | base | own == SPEC_GENERATE_FIELDS


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _table_fields(section: str) -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def test_extensions_are_marked_and_the_specs_actions_are_not(document):
    assert component(document, "CancelTaskRequest")[openapi.EXTENSION] is True
    assert "picserve extension" in component(document, "CancelTaskRequest")["description"]
    mask_index = component(document, "Image2ImageModel")["properties"]["MaskIndex"]
    assert mask_index[openapi.EXTENSION] is True and "picserve extension" in mask_index["description"]
    for action in SPEC_ACTIONS:
        assert openapi.EXTENSION not in component(document, f"{action}Request")
    for name, fields in openapi.EXTENSION_FIELDS.items():
        for field in fields:
            assert component(document, name)["properties"][field][openapi.EXTENSION] is True


def test_the_signature_and_the_ret_codes_are_explained(document):
    description = document["info"]["description"]
    assert "SHA-1" in description and "PrivateKey" in description and "request_uuid" in description
    assert "| 160 | ParamError |" in description and "| 170 | AuthError |" in description


def sdk_bodies() -> dict[str, dict[str, Any]]:
    """The body the SDK sends for each action (to a transport that answers every call with success)."""
    sent: dict[str, dict[str, Any]] = {}
    replies = {
        "ListTasksDetails": {"TaskDetailList": []},
        "ListControlNets": {"PreProcessors": {}, "ControlModels": {}},
    }
    replies |= {action: {"TaskUID": "t1"} for action in TASK_ACTIONS}

    def answer(http_request: httpx.Request) -> httpx.Response:
        body = httpx.Response(200, content=http_request.content).json()
        sent[body["Action"]] = body
        own = replies.get(body["Action"], {"TaskUIDList": []})
        return httpx.Response(200, json={"Action": body["Action"], "RetCode": 0, "Message": "", **own})

    client = Client("http://picpik.test", "pub", "priv", transport=httpx.MockTransport(answer))
    client.generate_images_sdxl(
        **request(SubModelList=[{"ModelCode": "xl-style", "InferenceParams": {"LoraWeight": 0.5}}]),
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.4, "MaskIndex": 1},
        ImageAndMaskList=[
            "data:image/png;base64,AAAA",
            "data:image/png;base64,BBBB",
            task_image("ckti5nf2h4keq8mr9n00"),
        ],
        ControlNetList=[
            control_unit("xl-canny", 2, "canny", weight=0.5, end=0.8, mode="PromptMoreImportant", CannyLowThreshold=50),
            control_unit("xl-depth", 0, mask_index=1, invert_mask=True, resize_mode="JustResize"),
        ],
        ReturnControlMaps=True,
        NegativePrompts=["blurry"],
        BatchSize=2,
        Tiling=True,
        HiresFix=hires_fix("Lanczos", 10, 0.5, (512, 512)),
    )
    client.call(  # no SDK method yet: the body as a client sends it
        "ApplyReferenceStyle",
        **request(
            ImageList=[task_image("ckti5nf2h4keq8mr9n00"), "data:image/png;base64,AAAA"],
            StyleReferStrength=0.7,
            RawReferStrength=0.5,
            StyleModel="ip-adapter_sdxl",
        ),
    )
    client.list_models()
    client.list_controlnets()
    client.list_tasks_details(["ckti5nf2h4keq8mr9n00"])
    client.list_running_tasks()
    client.get_credit_balance()
    client.cancel_task(["ckti5nf2h4keq8mr9n00"])
    client.import_model(Url="https://example.com/ink.safetensors", Kind="lora", Force=False, AuthToken="hf_x")
    image = "data:image/png;base64,AAAA"
    client.resize_image(Image=task_image("ckti5nf2h4keq8mr9n00"), Scale=2, UpscaleModel="Lanczos")
    client.remove_background(
        RawImage=image, Box=[0, 0, 1, 1], ErodeSize=0, HairOptimization="off", OnlyMask=True, BackgroundModel="u2net"
    )
    client.remove_backgrounds_in_batch(
        RawImages=[image, task_image("ckti5nf2h4keq8mr9n00", 1)], ForegroundThreshold=200
    )
    client.modify_masked_pixels(
        **request(Width=None, Height=None),
        **masked_edit(image, image, only_masked=True, padding=16, outpaint=(8, 0, 8, 0), strength=0.8),
    )
    client.remove_contents(RawImage=task_image("ckti5nf2h4keq8mr9n00"), Mask=image, MaskBlur=4, EraseModel="big-lama")
    client.restore_faces(RawImage=image, RestoreStrength=0.3, FaceModel="gfpgan", FaceDetectModel="yunet")
    client.extract_contents(
        RawImage=image, IncludePointList=[{"X": 1, "Y": 2}], ExcludePointList=[{"X": 0, "Y": 0}], OnlyMask=True
    )
    client.describe_images(ImageList=[image, image], TranslateDescription="ja", CaptionModel="blip")
    client.generate_backgrounds(
        **request(Width=None, Height=None),
        ImageList=[image, task_image("ckti5nf2h4keq8mr9n00")],
        TransparentForeground={"ImageIndex": 0, "Scale": 0.5, "X": 0, "Y": 4},
        BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 0.4, "DeepFusion": True},
    )
    return sent


def test_a_body_the_sdk_sends_validates_against_its_actions_schema(document):
    bodies = sdk_bodies()
    assert set(bodies) == set(ACTIONS)
    whole = validator(document, body_schema(document))
    for action, body in bodies.items():
        own = validator(document, {"$ref": f"#/components/schemas/{action}Request"})
        assert list(own.iter_errors(body)) == [], action
        assert list(whole.iter_errors(body)) == [], action  # exactly one branch of the oneOf


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Width": 63}, "Width"),  # an Int's bounds
        ({"Seed": 1.5}, "Seed"),
        ({"Tiling": "true"}, "Tiling"),  # strict wire types
        ({"Tileable": True}, "Tileable"),  # GenerateImages' name: unknown here, refused as the server does
        ({"Image2Image": {"ImageIndex": 0, "ResizeMode": "Stretch"}}, "ResizeMode"),
        ({"ControlNetList": [{"ImageIndex": 0}]}, "ControlNetList"),  # no ControlModel
        ({"ControlNetList": [control_unit("x", 0, weight=2.5)]}, "ControlWeight"),
        ({"ControlNetList": [control_unit("x", 0, mode="Prompt")]}, "ControlMode"),  # type: ignore[arg-type]
        ({"ControlNetList": [control_unit("x", 0)] * 4}, "ControlNetList"),
        ({"ReturnControlMaps": 1}, "ReturnControlMaps"),
    ],
)
def test_a_body_the_server_refuses_does_not_validate(document, change, field):
    body = {**sdk_bodies()["GenerateImagesSDXL"], **change}
    errors = list(validator(document, {"$ref": "#/components/schemas/GenerateImagesSDXLRequest"}).iter_errors(body))
    assert errors and field in str([*(e.path for e in errors), *(e.message for e in errors)])


def test_the_examples_validate_and_are_signed_with_the_specs_test_key(document):
    examples = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == set(ACTIONS)
    whole = validator(document, body_schema(document))
    for example in examples.values():
        assert list(whole.iter_errors(example["value"])) == []
        assert signature.verify(example["value"], "123456")


def test_the_servers_replies_validate_against_the_reply_schemas(stack, document):
    client = stack.client()
    replies = validator(document, reply_schema(document))

    def reply(action: str, **params: Any) -> dict[str, Any]:
        answer = stack.api.post("/", json=client.signed(action, **params)).json()
        assert list(replies.iter_errors(answer)) == [], answer
        own = validator(document, {"$ref": f"#/components/schemas/{action}Reply"})
        assert (answer["RetCode"] == 0) == (list(own.iter_errors(answer)) == [])
        return answer

    uid = reply("GenerateImagesSDXL", **request())["TaskUID"]
    assert reply("ListRunningTasks")["TaskUIDList"] == [uid]
    stack.run_worker()
    (detail,) = reply("ListTasksDetails", TaskUIDList=[uid])["TaskDetailList"]
    assert detail["Status"] == "Finished" and detail["ImgList"]
    assert MODEL in reply("ListModels")["MainModels"]
    assert "canny" in reply("ListControlNets")["PreProcessors"]
    reply("GetCreditBalance")
    reply("CancelTask", TaskUIDList=[uid])
    # refusals: the error reply, which no action's success reply matches
    assert reply("ListTasksDetails", TaskUIDList=["nope"])["RetCode"] == 230
    assert reply("GenerateImagesSDXL", **request(Width=63))["RetCode"] == 160


def test_the_other_routes_are_described(stack, document):
    for route in stack.api.app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            assert route.path in document["paths"], route.path
    result = document["paths"]["/results/{key}"]["get"]["responses"]
    assert "image/png" in result["200"]["content"] and "404" in result
    assert "get" in document["paths"]["/healthz"]
    if any(getattr(route, "path", None) == "/metrics" for route in stack.api.app.routes):
        assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    for own in ("/openapi.json", "/docs", "/redoc"):
        assert own not in document["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets_which_are_served(stack, page):
    response = stack.api.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html  # nothing outside the page's own origin
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(url.endswith(".js") for url in assets) and "/openapi.json" in html
    for url in assets:
        assert url.startswith(openapi.ASSETS_URL + "/"), url
        served = stack.api.get(url)
        assert served.status_code == 200, url
        if url.endswith(".js"):
            assert "javascript" in served.headers["content-type"]
        if url.endswith(".css"):
            assert served.headers["content-type"].startswith("text/css")

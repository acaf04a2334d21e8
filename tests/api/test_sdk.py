"""The SDK's public surface: one error family, typed shapes that match the wire models, no network."""

from __future__ import annotations

import typing

import httpx
import pytest

from picserve import errors
from picserve.protocol import messages, signature
from picserve.sdk import Client
from picserve.sdk import types as sdk_types


def client_on(handler) -> Client:
    return Client("http://picpik.test", "pub", "priv", transport=httpx.MockTransport(handler))


def test_every_call_is_signed_as_the_server_verifies():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"RetCode": 0, "Message": "", "TaskUIDList": ["t1"]})

    assert client_on(handler).list_running_tasks() == ["t1"]
    body = httpx.Response(200, content=seen[0].content).json()
    assert body["Action"] == "ListRunningTasks" and signature.verify(body, "priv")


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused", request=request)), "ConnectError"),
        (lambda request: httpx.Response(502, text="bad gateway"), "HTTP 502"),
        (lambda request: httpx.Response(200, text="<html>"), "other than JSON"),
        (lambda request: httpx.Response(200, json={"hello": 1}), "without a RetCode"),
    ],
)
def test_transport_failures_are_transport_errors(handler, message, instant_resends):
    with pytest.raises(errors.TransportError, match=message):
        client_on(handler).list_models()


def test_refusals_raise_the_class_of_their_ret_code():
    client = client_on(lambda request: httpx.Response(200, json={"RetCode": 230, "Message": "task 'x' not found"}))
    with pytest.raises(errors.TaskNotFound, match="not found"):
        client.list_tasks_details(["x"])


def test_wait_gives_up_with_a_wait_timeout_that_is_a_timeout_error():
    detail = {"TaskUID": "t", "Status": "Running"}
    client = client_on(lambda request: httpx.Response(200, json={"RetCode": 0, "TaskDetailList": [detail]}))
    with pytest.raises(TimeoutError):
        client.wait("t", timeout=0, poll=0)
    with pytest.raises(errors.WaitTimeout, match="still Running"):
        client.wait("t", timeout=0, poll=0)


def test_fetch_of_an_expired_result_is_a_transport_error():
    client = client_on(lambda request: httpx.Response(404, json={"Message": "result not found or expired"}))
    with pytest.raises(errors.TransportError, match="404"):
        client.fetch("http://picpik.test/results/abc.png")


@pytest.mark.parametrize(
    ("shape", "model"),
    [
        (sdk_types.GenerateImagesSDXLParams, messages.GenerateImagesSDXL),
        (sdk_types.TaskDetail, messages.TaskDetail),
        (sdk_types.ModelRef, messages.Model),
        (sdk_types.Image2Image, messages.Image2ImageModel),
        (sdk_types.ResizeImageParams, messages.ResizeImage),
        (sdk_types.ApplyReferenceStyleParams, messages.ApplyReferenceStyle),
        (sdk_types.RemoveBackgroundParams, messages.RemoveBackground),
        (sdk_types.RemoveBackgroundsInBatchParams, messages.RemoveBackgroundsInBatch),
        (sdk_types.RestoreFacesParams, messages.RestoreFaces),
        (sdk_types.FaceRestore, messages.FaceRestoreModel),
        (sdk_types.ExtractContentsParams, messages.ExtractContents),
        (sdk_types.Coordinate, messages.CoordinateModel),
        (sdk_types.DescribeImagesParams, messages.DescribeImages),
        (sdk_types.GenerateBackgroundsParams, messages.GenerateBackgrounds),
        (sdk_types.Foreground, messages.ForegroundModel),
        (sdk_types.BackgroundImage2Image, messages.BackgroundImage2ImageModel),
    ],
)
def test_sdk_shapes_name_the_wire_fields(shape, model):
    keys = set(typing.get_type_hints(shape))
    assert keys <= set(model.model_fields), keys - set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert required <= keys

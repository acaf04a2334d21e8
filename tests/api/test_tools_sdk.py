"""The SDK's image actions (ResizeImage, RemoveBackground, RemoveBackgroundsInBatch) and their helpers
(`image_data`, `task_image`): the bodies sent, signed as the server verifies, with no network."""

from __future__ import annotations

import base64
import io
import typing

import pytest
from PIL import Image

from picserve.protocol import messages, signature
from picserve.sdk import image_data, is_task_image, task_image
from picserve.sdk import types as sdk_types
from tests.api.conftest import own_fields, recording

UID = "ckti5nf2h4keq8mr9n00"


def encoded(kind: str, size: tuple[int, int] = (3, 2)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, format=kind)
    return buffer.getvalue()


def test_resize_image_sends_its_fields_signed():
    client, sent = recording()
    assert client.resize_image(Image=task_image(UID, 1), Scale=2, UpscaleModel="4x-ultrasharp") == "t1"
    assert client.resize_image(Image="data:image/png;base64,AAAA", Width=2048, Height=1536) == "t1"
    (scaled, sized) = sent
    assert scaled["Action"] == "ResizeImage" and signature.verify(scaled, "priv")
    assert own_fields(scaled) == {"Image": f"task:{UID}/1", "Scale": 2, "UpscaleModel": "4x-ultrasharp"}
    assert own_fields(sized) == {"Image": "data:image/png;base64,AAAA", "Width": 2048, "Height": 1536}
    assert signature.verify(sized, "priv")
    messages.ResizeImage.model_validate(own_fields(scaled))  # what the server parses them with
    messages.ResizeImage.model_validate(own_fields(sized))


def test_remove_background_sends_its_fields_signed():
    client, sent = recording()
    png = image_data(encoded("PNG"))
    assert (
        client.remove_background(
            RawImage=png,
            Box=[0, 0, 2, 1],
            ErodeSize=10,
            ForegroundThreshold=230,
            BackgroundThreshold=20,
            HairOptimization="on",
            OnlyMask=True,
            BackgroundModel="birefnet",
            Webhook={"Url": "https://hooks.example.com/x"},
        )
        == "t1"
    )
    (body,) = sent
    assert body["Action"] == "RemoveBackground" and signature.verify(body, "priv")
    assert own_fields(body) == {
        "RawImage": png,
        "Box": [0, 0, 2, 1],
        "ErodeSize": 10,
        "ForegroundThreshold": 230,
        "BackgroundThreshold": 20,
        "HairOptimization": "on",
        "OnlyMask": True,
        "BackgroundModel": "birefnet",
        "Webhook": {"Url": "https://hooks.example.com/x"},
    }
    messages.RemoveBackground.model_validate(own_fields(body))


def test_remove_backgrounds_in_batch_sends_the_images_in_order_signed():
    client, sent = recording()
    images = [image_data(encoded("JPEG")), task_image(UID), task_image(UID, 3)]
    assert client.remove_backgrounds_in_batch(RawImages=images, OnlyMask=False) == "t1"
    (body,) = sent
    assert body["Action"] == "RemoveBackgroundsInBatch" and signature.verify(body, "priv")
    assert own_fields(body) == {"RawImages": images, "OnlyMask": False}
    messages.RemoveBackgroundsInBatch.model_validate(own_fields(body))


@pytest.mark.parametrize(
    ("shape", "model"),
    [
        (sdk_types.ResizeImageParams, messages.ResizeImage),
        (sdk_types.RemoveBackgroundParams, messages.RemoveBackground),
        (sdk_types.RemoveBackgroundsInBatchParams, messages.RemoveBackgroundsInBatch),
    ],
)
def test_the_image_actions_shapes_are_the_wire_models(shape, model):
    """Every field of the wire model, no other, and required exactly where the server requires it."""
    assert set(typing.get_type_hints(shape)) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert marked(shape, typing.Required) == required  # the shapes are total=False: Required marks the rest


def test_models_reply_knows_the_new_model_maps():
    assert {"UpscaleModels", "BackgroundModels"} <= marked(sdk_types.ModelsReply, typing.NotRequired)


def marked(shape: type, qualifier: typing.Any) -> set[str]:
    """The keys of `shape` annotated `qualifier[...]` (Required or NotRequired). Read from the annotations:
    `sdk.types` postpones them (`from __future__ import annotations`), so `__required_keys__` cannot tell."""
    hints = typing.get_type_hints(shape, include_extras=True)
    return {name for name, hint in hints.items() if typing.get_origin(hint) is qualifier}


@pytest.mark.parametrize(("kind", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_image_data_is_a_data_uri_of_the_format_the_bytes_are(kind, media_type, tmp_path):
    data = encoded(kind)
    uri = image_data(data)
    assert uri == f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    # the format is the bytes', not the file name's
    path = tmp_path / "picture.png.jpg"
    path.write_bytes(data)
    assert image_data(path) == uri
    assert image_data(str(path)) == uri
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as decoded:
        assert decoded.format == kind and decoded.size == (3, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a\x01\x00\x01\x00", "not a PNG, JPEG or WebP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "not a PNG, JPEG or WebP"),
        (b"hello", "not a PNG, JPEG or WebP"),
    ],
)
def test_image_data_refuses_what_the_server_would(data, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        image_data(data)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        image_data(path)


def test_image_data_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        image_data(tmp_path / "nope.png")


def test_task_image_names_a_tasks_result():
    assert task_image(UID) == f"task:{UID}/0"
    assert task_image(UID, 2) == f"task:{UID}/2"
    assert is_task_image(task_image(UID, 15))
    assert not is_task_image(f"task:{UID}") and not is_task_image("data:image/png;base64,AAAA")


@pytest.mark.parametrize(("uid", "index"), [(UID, -1), ("", 0), ("a/b", 0), (UID, True), (UID, 1.0)])
def test_task_image_refuses_what_is_no_reference(uid, index):
    with pytest.raises(ValueError, match="expected a TaskUID and an index"):
        task_image(uid, index)

"""The PICPIK API against real PostgreSQL and the real worker, through the in-process app."""

import json
import os
import shutil
import time
import uuid
from io import BytesIO

import pytest
from PIL import Image

from picserve import errors
from picserve.api.app import services_of
from picserve.protocol import signature

from .conftest import tiny_request


def png(client, url) -> Image.Image:
    return Image.open(BytesIO(client.fetch(url)))


def test_generate_poll_download(make_client, run_worker):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request(Width=100, Height=72, BatchSize=2))
    queued = client.list_tasks_details([uid])[0]
    assert queued["Status"] == "Queuing" and queued["Progress"] == 0 and queued["ImgList"] == []
    assert client.list_running_tasks() == [uid]

    run_worker()

    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished", detail
    assert (detail["Seed"], detail["SeedList"], detail["Progress"]) == (1, [1, 2], 1.0)
    assert detail["ErrorCode"] == 0 and detail["ErrorMassage"] == "" and detail["TxtList"] == []
    assert len(detail["ImgList"]) == 2 and all(u.startswith("http://testserver/results/") for u in detail["ImgList"])
    image = png(client, detail["ImgList"][0])
    assert image.size == (100, 72)
    assert "Seed: 1, Size: 100x72" in image.text["parameters"]
    cost = detail["ConsumeApiPoint"]
    assert cost >= 1 and client.get_credit_balance()["UsedCredits"] == cost
    assert client.list_running_tasks() == []


def test_same_seed_same_bytes_and_random_seed_reproduces(make_client, run_worker):
    client = make_client()
    first, second = (client.generate_images_sdxl(**tiny_request(Seed=1234)) for _ in range(2))
    random_uid = client.generate_images_sdxl(**tiny_request(Seed=-1))
    run_worker()
    a, b, r = client.list_tasks_details([first, second, random_uid])
    assert client.fetch(a["ImgList"][0]) == client.fetch(b["ImgList"][0])
    assert 0 <= r["Seed"] < 2**31
    again = client.generate_images_sdxl(**tiny_request(Seed=r["Seed"]))
    run_worker()
    (c,) = client.list_tasks_details([again])
    assert client.fetch(c["ImgList"][0]) == client.fetch(r["ImgList"][0])


def test_a_key_sees_only_its_own_tasks(make_client):
    alice, bob = make_client(name="alice"), make_client(name="bob")
    uid = alice.generate_images_sdxl(**tiny_request())
    with pytest.raises(errors.TaskNotFound, match=uid):
        bob.list_tasks_details([uid])
    with pytest.raises(errors.TaskNotFound):
        bob.cancel_task([uid])
    assert bob.list_running_tasks() == [] and alice.list_running_tasks() == [uid]


def signed(client, body, key=None):
    """`body` signed by `client`'s key pair, or with `key` as the private key."""
    if key is None:
        return client.signed(body["Action"], **{k: v for k, v in body.items() if k != "Action"})
    body = dict(body, PublicKey=client.public_key)
    body["Signature"] = signature.sign(body, key)
    return body


def post(api, body):
    response = api.post("/", content=body if isinstance(body, (str, bytes)) else json.dumps(body))
    assert response.status_code == 200
    return response.json()


def test_signature_failures_are_refused(api, make_client):
    client = make_client()
    good = signed(client, {"Action": "ListModels", "request_uuid": "u-1"})
    assert post(api, good)["RetCode"] == 0

    wrong_key = signed(client, {"Action": "ListModels"}, key="not-my-private-key")
    changed = signed(client, {"Action": "GenerateImagesSDXL", **tiny_request()})
    changed["Seed"] = 2
    unsigned = {"Action": "ListModels", "PublicKey": client.public_key}
    unknown = signed(client, {"Action": "ListModels"})
    unknown["PublicKey"] = "nobody"
    for body, code in ((wrong_key, 170), (changed, 170), (unsigned, 170), (unknown, 171)):
        reply = post(api, body)
        assert reply["RetCode"] == code and reply["Message"], reply
    assert "TaskUID" not in post(api, changed)


def test_revoked_key_is_refused(api, make_client):
    client = make_client()
    api.portal.call(services_of(api.app).repo.revoke_key, client.public_key)
    with pytest.raises(errors.UnknownKey, match="revoked"):
        client.list_models()


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[1,2]",
        "null",
        '{"Action": 5}',
        '{"Action": "ListModels"}',
        "[" * 100_000,
        '{"Action": "ListModels", "PublicKey": "p", "Signature": "s", "X": NaN}',
        '{"Action": "ListModels", "PublicKey": ["p"], "Signature": "s"}',
    ],
)
def test_malformed_requests_get_a_retcode_not_a_500(api, raw):
    reply = post(api, raw)
    assert reply["RetCode"] != 0 and reply["RetCode"] != 500 and reply["Message"]


def test_request_uuid_and_action_are_echoed(api, make_client):
    client = make_client()
    ok = post(api, signed(client, {"Action": "GetCreditBalance", "request_uuid": "abc"}))
    assert (ok["Action"], ok["request_uuid"], ok["RetCode"], ok["Message"]) == ("GetCreditBalance", "abc", 0, "")
    bad = post(api, signed(client, {"Action": "Nope", "request_uuid": "xyz"}))
    assert (bad["Action"], bad["request_uuid"], bad["RetCode"]) == ("Nope", "xyz", 161)
    assert "GenerateImagesSDXL" in bad["Message"]


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"Width": 3000}, 160, "Width: must be between 64 and 2560 (got 3000)"),
        (
            {"MainModel": {"ModelCode": "missing-model"}},
            231,
            "MainModel.ModelCode 'missing-model' is not on this server",
        ),
        (
            {"MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Sampler": "Euler z"}}},
            160,
            "MainModel.InferenceParams.Sampler: unknown sampler 'Euler z'; valid: Euler, Euler a",
        ),
        (
            {"Image2Image": {"ImageIndex": 0}},
            160,
            "Image2Image.ImageIndex 0 is out of range: ImageAndMaskList has 0 entries",
        ),
        ({"SubModelList": [{"ModelCode": "x"}]}, 231, "SubModelList[0].ModelCode 'x' is not a LoRA, embedding"),
        ({"Bogus": True}, 160, "Bogus: unknown field for GenerateImagesSDXL"),
    ],
)
def test_invalid_generation_requests_name_the_field(make_client, overrides, code, message):
    client = make_client()
    with pytest.raises(errors.PicserveError) as info:
        client.generate_images_sdxl(**tiny_request(**overrides))
    assert info.value.ret_code == code and info.value.message.startswith(message)
    assert client.list_running_tasks() == []


def test_credits_are_reserved_then_charged(make_client, run_worker):
    client = make_client(credits=3)
    uid = client.generate_images_sdxl(**tiny_request(Width=512, Height=512, BatchSize=1))  # costs ceil(1.5) = 2
    with pytest.raises(errors.InsufficientCredits, match="costs 2 credits and 1 are available"):
        client.generate_images_sdxl(**tiny_request(Width=512, Height=512))
    run_worker()
    assert client.list_tasks_details([uid])[0]["ConsumeApiPoint"] == 2
    balance = client.get_credit_balance()
    assert (balance["TotalCredits"], balance["UsedCredits"]) == (3, 2)


def test_runtime_failure_is_reported_and_not_charged(make_client, run_worker, models_dir):
    # A LoRA that was there at submit and is gone when the task runs: a failure only the run can meet.
    code = f"vanishing-{uuid.uuid4().hex[:8]}"
    path = models_dir / "lora" / f"{code}.safetensors"
    shutil.copy(models_dir / "lora" / "kohya-0.safetensors", path)
    client = make_client()
    try:
        uid = client.generate_images_sdxl(**tiny_request(SubModelList=[{"ModelCode": code}]))
    finally:
        path.unlink()
    time.sleep(2.5)  # past the catalog's rescan interval: the worker sees the folder as it is now
    run_worker()
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Error" and detail["ErrorCode"] == 503, detail  # ModelLoadError
    assert code in detail["ErrorMassage"]
    assert detail["ConsumeApiPoint"] == 0 and client.get_credit_balance()["UsedCredits"] == 0


def test_cancel_a_queued_task(make_client, run_worker):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request())
    client.cancel_task([uid])
    run_worker()
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Canceled" and detail["ImgList"] == [] and detail["ErrorCode"] == 510
    assert client.get_credit_balance()["UsedCredits"] == 0


def test_list_models_and_balance(make_client):
    client = make_client(credits=77)
    models = client.list_models()
    tiny = models["MainModels"]["picserve-tiny"]
    assert tiny["ModelCode"] == "picserve-tiny" and tiny["InferenceParams"]["Steps"] == 6
    assert "picserve-tiny-diffusers" in models["MainModels"]
    assert "kohya-0" in models["LoraModels"] and "emb-a" in models["EmbeddingModels"]
    assert "hyper-a" in models["HypernetworkModels"]
    balance = client.get_credit_balance()
    assert (balance["TotalCredits"], balance["UsedCredits"]) == (77, 0) and "ExpireTimestamp" not in balance


def test_translation_warning_when_no_model(make_client):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request(PositivePrompts=["一只猫, masterpiece"]))
    assert "TranslatePrompts" in client.list_tasks_details([uid])[0]["Warnings"][0]
    plain = client.generate_images_sdxl(**tiny_request(PositivePrompts=["一只猫"], TranslatePrompts=False))
    assert client.list_tasks_details([plain])[0]["Warnings"] == []


def test_expired_results_are_gone(settings, api, make_client, run_worker):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request())
    run_worker()
    url = client.list_tasks_details([uid])[0]["ImgList"][0]
    assert api.get(url).status_code == 200
    old = time.time() - settings.result_ttl_seconds - 1
    for path in settings.results_dir.glob("*.png"):  # as if written a day ago
        os.utime(path, (old, old))
    assert api.get(url).status_code == 404
    assert api.get("/results/not-a-key.png").status_code == 404

"""Every action through the HTTP app and the SDK, on in-memory services, with the real worker loop."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from picserve import errors
from picserve.engine.fake import FakeEngine
from picserve.tasks import retention
from picserve.worker import jobs
from tests.headers import write_header

from .conftest import MODEL, open_stack, request


def post(stack, body) -> dict:
    response = stack.api.post("/", content=body if isinstance(body, (str, bytes)) else json.dumps(body))
    assert response.status_code == 200
    return response.json()


def test_generate_run_poll_fetch(stack, client):
    uid = client.generate_images_sdxl(**request(BatchSize=2))
    queued = client.list_tasks_details([uid])[0]
    assert queued["Status"] == "Queuing" and queued["ImgList"] == [] and client.list_running_tasks() == [uid]

    engine = stack.run_worker()

    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished" and detail["Progress"] == 1.0, detail
    assert (detail["Seed"], detail["SeedList"]) == (1, [1, 2])
    assert all(url.startswith("http://testserver/results/") for url in detail["ImgList"])
    images = [Image.open(io.BytesIO(client.fetch(url))) for url in detail["ImgList"]]
    assert [image.size for image in images] == [(64, 72)] * 2
    assert "Seed: 2" in images[1].text["parameters"]
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"] >= 1
    assert client.list_running_tasks() == []
    assert [spec.steps for spec in engine.calls] == [6]  # the sidecar's default Steps


def test_same_seed_same_pixels(stack, client):
    first, second = (client.generate_images_sdxl(**request(Seed=77)) for _ in range(2))
    stack.run_worker()
    a, b = client.list_tasks_details([first, second])
    assert client.fetch(a["ImgList"][0]) == client.fetch(b["ImgList"][0])


def test_cancel_a_queued_task_means_it_never_runs(stack, client):
    uid = client.generate_images_sdxl(**request())
    client.cancel_task([uid])
    engine = stack.run_worker()
    detail = client.list_tasks_details([uid])[0]
    assert (detail["Status"], detail["ErrorCode"], detail["ImgList"]) == ("Canceled", 510, [])
    assert engine.calls == [] and client.get_credit_balance()["UsedCredits"] == 0


def test_an_internal_failure_reaches_the_client_as_a_stable_message(stack, client, caplog):
    class Broken(FakeEngine):
        def generate(self, spec, on_step=None, on_preview=None):
            raise ValueError("secret internals /srv/models/x")

    uid = client.generate_images_sdxl(**request())
    stack.run_worker(Broken())
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Error" and detail["ErrorCode"] == 500
    assert detail["ErrorMassage"] == jobs.INTERNAL_ERROR.format(task_uid=uid)
    assert "secret" not in detail["ErrorMassage"]
    assert any("secret internals" in (r.exc_text or "") for r in caplog.records)  # the log has the traceback
    assert client.get_credit_balance()["UsedCredits"] == 0


def test_a_key_sees_only_its_own_tasks(stack):
    alice, bob = stack.client(name="alice"), stack.client(name="bob")
    uid = alice.generate_images_sdxl(**request())
    with pytest.raises(errors.TaskNotFound, match=uid):
        bob.list_tasks_details([uid])
    with pytest.raises(errors.TaskNotFound):
        bob.cancel_task([uid])
    assert bob.list_running_tasks() == [] and alice.list_running_tasks() == [uid]


def test_cancel_naming_an_unknown_task_is_task_not_found_and_cancels_nothing(stack, client):
    listed = client.generate_images_sdxl(**request(Seed=1))
    other = client.generate_images_sdxl(**request(Seed=2))
    unknown = "0" * 32
    reply = post(stack, client.signed("CancelTask", TaskUIDList=[listed, unknown]))
    assert reply["RetCode"] == errors.TaskNotFound.ret_code == 230 and unknown in reply["Message"], reply
    with pytest.raises(errors.TaskNotFound, match=unknown):
        client.cancel_task([unknown])
    # nothing was cancelled, not even the known task listed with it: both still run, and are charged
    assert [d["Status"] for d in client.list_tasks_details([listed, other])] == ["Queuing", "Queuing"]
    engine = stack.run_worker()
    assert len(engine.calls) == 2
    details = client.list_tasks_details([listed, other])
    assert [d["Status"] for d in details] == ["Finished", "Finished"]
    assert client.get_credit_balance()["UsedCredits"] == sum(d["ConsumeApiPoint"] for d in details)


def test_credits_are_checked_at_submit(stack):
    poor = stack.client(credits=1)
    with pytest.raises(errors.InsufficientCredits, match="costs"):
        poor.generate_images_sdxl(**request(Width=1024, Height=1024, BatchSize=4))


def test_list_models_and_balance(stack):
    client = stack.client(credits=77)
    models = client.list_models()
    main = models["MainModels"][MODEL]
    assert (main["Name"], main["BaseModel"], main["InferenceParams"]["Steps"]) == ("Fast XL", "SDXL", 6)
    assert models["LoraModels"]["xl-style"]["CompatibleMainModels"] == [MODEL]
    assert models["LoraModels"]["sd1-style"]["CompatibleMainModels"] == []
    assert "emb-xl" in models["EmbeddingModels"]
    assert client.get_credit_balance() == {"TotalCredits": 77, "UsedCredits": 0}


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"Width": 3000}, 160, "Width: must be between 64 and 2560 (got 3000)"),
        ({"BatchSize": 0}, 160, "BatchSize: must be between 1 and 16"),
        ({"MainModel": {"ModelCode": "nope"}}, 231, "'nope' is not on this server"),
        ({"MainModel": {"ModelCode": MODEL, "InferenceParams": {"Sampler": "Euler b"}}}, 160, "unknown sampler"),
        ({"SubModelList": [{"ModelCode": "sd1-style"}]}, 232, "does not fit main model"),
        ({"SubModelList": [{"ModelCode": "missing"}]}, 231, "SubModelList[0].ModelCode 'missing'"),
        ({"Image2Image": {"ImageIndex": -1}, "ImageAndMaskList": []}, 160, "ImageIndex: must be at least 0"),
        ({"Colour": "red"}, 160, "Colour: unknown field"),
    ],
)
def test_invalid_requests_are_refused_before_queueing(stack, client, fields, code, words):
    with pytest.raises(errors.PicserveError) as caught:
        client.generate_images_sdxl(**request(**fields))
    assert caught.value.ret_code == code and words in caught.value.message
    assert stack.api.portal.call(stack.repo.queued_count) == 0


def test_trigger_words_are_listed_not_appended_by_default(stack, client):
    assert client.list_models()["LoraModels"]["xl-style"]["TriggerWordList"] == ["inkstyle"]
    uid = client.generate_images_sdxl(**request(SubModelList=[{"ModelCode": "xl-style"}]))
    assert client.list_tasks_details([uid])[0]["Prompt"] == "a photo of a cat"


@pytest.mark.parametrize(("weight", "prompt"), [(1.0, "a photo of a cat, inkstyle"), (0, "a photo of a cat")])
def test_trigger_words_are_appended_when_the_operator_asks_but_never_at_weight_zero(settings, weight, prompt):
    with open_stack(settings.evolve(append_trigger_words=True)) as appending:
        client = appending.client()
        sub = {"ModelCode": "xl-style", "InferenceParams": {"LoraWeight": weight}}
        uid = client.generate_images_sdxl(**request(SubModelList=[sub]))
        assert client.list_tasks_details([uid])[0]["Prompt"] == prompt


def test_envelope_failures(stack, client):
    good = client.signed("ListModels", request_uuid="u-1")
    reply = post(stack, good)
    assert (reply["RetCode"], reply["request_uuid"], reply["Action"]) == (0, "u-1", "ListModels")

    unknown_action = client.signed("MakeCoffee")
    tampered = client.signed("GenerateImagesSDXL", **request())
    tampered["Seed"] = 2
    unknown_key = dict(client.signed("ListModels"), PublicKey="nobody")
    unsigned = {"Action": "ListModels", "PublicKey": client.public_key}
    cases = [(unknown_action, 161), (tampered, 170), (unknown_key, 171), (unsigned, 170), ("{not json", 160)]
    cases += [("[1, 2]", 160), ('{"Action": "ListModels", "PublicKey": "p", "Signature": "s", "X": NaN}', 160)]
    for body, code in cases:
        reply = post(stack, body)
        assert reply["RetCode"] == code and reply["Message"], (body, reply)


def test_revoked_key_is_refused_on_its_next_request(stack, client):
    assert client.list_models()
    stack.api.portal.call(stack.repo.revoke_key, client.public_key)
    with pytest.raises(errors.UnknownKey, match="revoked"):
        client.list_models()


def test_expired_results_are_gone(stack, client):
    uid = client.generate_images_sdxl(**request())
    stack.run_worker()
    url = client.list_tasks_details([uid])[0]["ImgList"][0]
    assert stack.api.get(url).status_code == 200
    stack.store.clock = lambda: 10**12  # far in the future
    assert stack.api.get(url).status_code == 404
    assert stack.api.get("/results/not-a-key.png").status_code == 404


def test_ended_tasks_past_retention_are_deleted_with_their_files(stack, client):
    done = client.generate_images_sdxl(**request())
    stack.run_worker()
    queued = client.generate_images_sdxl(**request())
    assert len(stack.store) == 1
    expired, deleted = stack.api.portal.call(retention.clean, stack.repo, stack.store, 0.0)
    assert (expired, deleted) == (0, 1) and len(stack.store) == 0
    with pytest.raises(errors.TaskNotFound):
        client.list_tasks_details([done])
    assert client.list_tasks_details([queued])[0]["Status"] == "Queuing"  # open tasks are kept


def png_b64(width: int = 40, height: int = 30, colour: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_reference_images_wait_in_the_store_not_in_the_task_row(stack, client):
    fields = {"ImageAndMaskList": [png_b64(), png_b64(colour="white")], "Image2Image": {"ImageIndex": 0}}
    uid = client.generate_images_sdxl(**request(**fields))
    (record,) = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)
    assert record.spec.init_image is None and record.spec.mask_image is None  # the row stays small
    assert record.spec.mode == "inpaint" and len(stack.store) == 2
    assert stack.api.get(f"/results/{record.spec.init_image_key}").status_code == 404  # inputs are not served

    engine = stack.run_worker()
    assert engine.calls[0].init_image == png_b64() and engine.calls[0].mask_image == png_b64(colour="white")
    assert client.list_tasks_details([uid])[0]["Status"] == "Finished"
    assert len(stack.store) == 1  # the result; the task's references were deleted when it ended


def test_a_cancelled_queued_tasks_references_go_with_it(stack, client):
    uid = client.generate_images_sdxl(**request(ImageAndMaskList=[png_b64()], Image2Image={"ImageIndex": 0}))
    client.cancel_task([uid])
    assert len(stack.store) == 1
    stack.api.portal.call(retention.clean, stack.repo, stack.store, 0.0)
    assert len(stack.store) == 0


def test_lycoris_files_are_listed_with_their_base_and_unusable_ones_refused_with_the_reason(models_folder, stack):
    lora = models_folder / "lora"
    write_header(
        lora / "xl-loha.safetensors",
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.hada_w1_b": (4, 2048)},
    )
    write_header(
        lora / "sd1-lokr.safetensors",
        {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w1": (4, 8),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w2": (80, 96),
        },
    )
    write_header(lora / "oft.safetensors", {"lora_unet_x.oft_blocks": (4, 8, 8)})
    client = stack.client()
    listed = client.list_models()["LoraModels"]
    assert (listed["xl-loha"]["BaseModel"], listed["xl-loha"]["CompatibleMainModels"]) == ("SDXL", [MODEL])
    assert (listed["sd1-lokr"]["BaseModel"], listed["sd1-lokr"]["CompatibleMainModels"]) == ("SD1", [])
    assert "OFT/BOFT" in listed["oft"]["Problem"] and listed["oft"]["CompatibleMainModels"] == []
    for code, words in (("sd1-lokr", "is a SD1 lora and does not fit"), ("oft", "cannot be used: a LyCORIS OFT/BOFT")):
        with pytest.raises(errors.PicserveError) as refused:
            client.generate_images_sdxl(**request(SubModelList=[{"ModelCode": code}]))
        assert refused.value.ret_code == 232 and words in refused.value.message, refused.value.message
    assert client.generate_images_sdxl(**request(SubModelList=[{"ModelCode": "xl-loha"}]))

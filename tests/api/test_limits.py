"""What keeps one client from hurting the others, through the API: idempotent resends, the open-task
cap, the request rate, revocation. In-memory repository, FakeEngine (the fast tier)."""

from __future__ import annotations

import dataclasses
import uuid

import httpx

from picserve import errors
from picserve.config import Settings
from picserve.sdk import Client
from tests.api.conftest import Stack, open_stack, request


def post(stack: Stack, client: Client, action: str, request_uuid: str | None = None, **params: object) -> dict:
    """One signed request, sent as it is (the SDK's `call` would raise on a non-zero RetCode)."""
    reply = stack.api.post("/", json=client.signed(action, request_uuid=request_uuid, **params))
    assert reply.status_code == 200
    return reply.json()


def used(client: Client) -> int:
    return client.get_credit_balance()["UsedCredits"]


# --- idempotent resends ---------------------------------------------------------------------------------


def test_a_resent_request_gets_the_same_task_and_is_charged_once(stack: Stack, client: Client) -> None:
    rid = str(uuid.uuid4())
    first = post(stack, client, "GenerateImagesSDXL", rid, **request())
    again = post(stack, client, "GenerateImagesSDXL", rid, **request())
    assert first["RetCode"] == again["RetCode"] == 0
    assert again["TaskUID"] == first["TaskUID"] and again["request_uuid"] == rid
    assert client.list_running_tasks() == [first["TaskUID"]]
    stack.run_worker()
    detail = client.wait(first["TaskUID"])
    assert detail["Status"] == "Finished" and used(client) == detail["ConsumeApiPoint"] > 0
    # after the task has ended, a resend still gets it, and it is neither run nor charged again
    assert post(stack, client, "GenerateImagesSDXL", rid, **request())["TaskUID"] == first["TaskUID"]
    stack.run_worker()
    assert client.list_running_tasks() == [] and used(client) == detail["ConsumeApiPoint"]


def test_an_integral_float_resend_is_the_same_request(stack: Stack, client: Client) -> None:
    rid = str(uuid.uuid4())
    first = post(stack, client, "GenerateImagesSDXL", rid, **request(Width=64))
    again = post(stack, client, "GenerateImagesSDXL", rid, **request(Width=64.0))  # signed alike
    assert again["TaskUID"] == first["TaskUID"]


def test_a_request_uuid_reused_with_other_parameters_is_refused(stack: Stack, client: Client) -> None:
    rid = str(uuid.uuid4())
    first = post(stack, client, "GenerateImagesSDXL", rid, **request(Seed=1))
    other = post(stack, client, "GenerateImagesSDXL", rid, **request(Seed=2))
    assert other["RetCode"] == errors.IdempotencyConflict.ret_code == 162
    assert f"was already used for task {first['TaskUID']} with other parameters" in other["Message"]
    assert client.list_running_tasks() == [first["TaskUID"]]


def test_requests_without_a_shared_request_uuid_are_separate_tasks(stack: Stack, client: Client) -> None:
    a = post(stack, client, "GenerateImagesSDXL", None, **request())
    b = post(stack, client, "GenerateImagesSDXL", None, **request())
    assert a["TaskUID"] != b["TaskUID"]
    body = client.signed("GenerateImagesSDXL", **request())
    del body["request_uuid"]
    from picserve.protocol import signature

    body["Signature"] = signature.sign({k: v for k, v in body.items() if k != "Signature"}, _private(stack, client))
    c, d = (stack.api.post("/", json=body).json() for _ in range(2))
    assert c["RetCode"] == d["RetCode"] == 0 and c["TaskUID"] != d["TaskUID"]  # nothing to match them by


def test_another_key_may_use_the_same_request_uuid(stack: Stack, client: Client) -> None:
    rid = str(uuid.uuid4())
    other = stack.client(name="other")
    a = post(stack, client, "GenerateImagesSDXL", rid, **request())
    b = post(stack, other, "GenerateImagesSDXL", rid, **request())
    assert a["RetCode"] == b["RetCode"] == 0 and a["TaskUID"] != b["TaskUID"]


def test_the_sdk_resends_a_request_lost_in_transit_under_its_request_uuid(stack: Stack, client: Client) -> None:
    """The server accepts the request, the reply is lost: the SDK's resend gets the same TaskUID."""
    sent: list[dict] = []

    def flaky(req: httpx.Request) -> httpx.Response:
        reply = stack.api.post("/", content=req.content, headers={"content-type": "application/json"})
        sent.append(reply.json())
        if len(sent) == 1:
            raise httpx.ReadTimeout("reply lost", request=req)
        return httpx.Response(200, content=reply.content, headers={"content-type": "application/json"})

    sdk = Client("http://testserver", client.public_key, _private(stack, client), transport=httpx.MockTransport(flaky))
    task_uid = sdk.generate_images_sdxl(**request())  # type: ignore[arg-type]
    assert len(sent) == 2 and sent[0]["TaskUID"] == sent[1]["TaskUID"] == task_uid
    assert client.list_running_tasks() == [task_uid]


def _private(stack: Stack, client: Client) -> str:
    account = stack.api.portal.call(stack.repo.get_account, client.public_key)
    assert account is not None
    return account.private_key


# --- per-key limits -------------------------------------------------------------------------------------


def test_the_open_task_cap_refuses_with_its_retcode_until_a_task_ends(stack: Stack) -> None:
    client = stack.client()
    stack.api.portal.call(stack.repo.set_limits, client.public_key, 2, None)
    uids = [client.generate_images_sdxl(**request()) for _ in range(2)]  # type: ignore[arg-type]
    refused = post(stack, client, "GenerateImagesSDXL", **request())
    assert refused["RetCode"] == errors.TooManyOpenTasks.ret_code == 281
    assert "has 2 open tasks (queued or running) and may have at most 2: retry when one" in refused["Message"]
    # another key is not held back by this one's backlog
    assert stack.client(name="other").generate_images_sdxl(**request())  # type: ignore[arg-type]
    client.cancel_task(uids[:1])
    assert post(stack, client, "GenerateImagesSDXL", **request())["RetCode"] == 0


def test_the_server_wide_open_task_cap_applies_to_keys_without_their_own(settings, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from picserve.api.app import create_app
    from picserve.services import Services
    from picserve.storage.memory import MemoryStore
    from picserve.tasks.memory import InMemoryRepository, in_memory_app

    repo = InMemoryRepository(in_memory_app())
    services = Services.build(dataclasses.replace(settings, max_open_tasks=1), repo=repo, store=MemoryStore(60))
    with TestClient(create_app(services.settings, services)) as api:
        api.portal.call(repo.app.open_async)
        stack = Stack(api=api, repo=repo, store=services.store, settings=services.settings)  # type: ignore[arg-type]
        plain, own = stack.client(name="plain"), stack.client(name="own")
        api.portal.call(repo.set_limits, own.public_key, 3, None)
        assert post(stack, plain, "GenerateImagesSDXL", **request())["RetCode"] == 0
        assert post(stack, plain, "GenerateImagesSDXL", **request())["RetCode"] == 281
        assert [post(stack, own, "GenerateImagesSDXL", **request())["RetCode"] for _ in range(4)] == [0, 0, 0, 281]


def test_the_request_rate_refuses_with_its_retcode_and_says_when_to_retry(stack: Stack) -> None:
    client, other = stack.client(), stack.client(name="other")
    stack.api.portal.call(stack.repo.set_limits, client.public_key, None, 3)
    codes = [post(stack, client, "GetCreditBalance")["RetCode"] for _ in range(3)]
    refused = post(stack, client, "ListRunningTasks")  # every action counts
    assert codes == [0, 0, 0] and refused["RetCode"] == errors.RateLimited.ret_code == 282
    assert "may send 3 requests per minute" in refused["Message"] and "retry in 2" in refused["Message"]
    assert post(stack, other, "GetCreditBalance")["RetCode"] == 0  # another key has its own rate
    # a request that is not correctly signed is refused before it counts: nobody spends another's rate
    forged = client.signed("GetCreditBalance")
    forged["Signature"] = "0" * 40
    assert stack.api.post("/", json=forged).json()["RetCode"] == 170


def test_a_key_with_no_rate_limit_is_never_refused(settings: Settings) -> None:
    # the server's default rate made small, so that going three times past it takes few requests
    with open_stack(dataclasses.replace(settings, max_requests_per_minute=50)) as stack:
        client, limited = stack.client(), stack.client(name="limited")
        stack.api.portal.call(stack.repo.set_limits, client.public_key, None, 0)
        assert {post(stack, client, "GetCreditBalance")["RetCode"] for _ in range(150)} == {0}
        # the default does hold for a key without a rate of its own
        codes = [post(stack, limited, "GetCreditBalance")["RetCode"] for _ in range(51)]
        assert codes == [0] * 50 + [errors.RateLimited.ret_code]


def test_a_revoked_key_is_refused_on_its_next_request(stack: Stack, client: Client) -> None:
    assert post(stack, client, "GetCreditBalance")["RetCode"] == 0
    stack.api.portal.call(stack.repo.revoke_key, client.public_key)
    assert post(stack, client, "GetCreditBalance")["RetCode"] == 171

"""AsyncClient: Client's twin for asyncio. Every action sends the body Client sends and returns what Client
returns (on mock transports); the same errors and resends; and a generation end to end on the in-process
picserve (tests/api/conftest.py), through `httpx.ASGITransport` in the app's own event loop."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import re
import typing

import httpx
import pytest
from PIL import Image

from picserve import errors
from picserve.engine.fake import FakeEngine
from picserve.protocol import signature
from picserve.sdk import AsyncClient, Client, control_unit, hires_fix, image_data, masked_edit, task_image
from picserve.worker import jobs, process
from tests.api.conftest import Stack, own_fields, request

UID = "ckti5nf2h4keq8mr9n00"
DETAIL = {"TaskUID": UID, "Status": "Running", "Progress": 0.5, "ImgList": []}
#: a reply every action's method reads what it needs from
REPLY = {
    "RetCode": 0,
    "Message": "",
    "TaskUID": UID,
    "TaskDetailList": [DETAIL],
    "TaskUIDList": [UID],
    "MainModels": [{"ModelCode": "fast-xl"}],
    "ControlModels": [],
    "Credits": 90,
    "UsedCredits": 10,
}
PNG = image_data(b"\x89PNG\r\n\x1a\n")

#: every action's method, with arguments (Client's other public methods are the plumbing below)
ACTIONS: list[tuple[str, tuple[typing.Any, ...], dict[str, typing.Any]]] = [
    (
        "generate_images_sdxl",
        (),
        request(
            ImageAndMaskList=[PNG],
            ControlNetList=[control_unit("xl-canny", 0, "canny", weight=0.8, CannyLowThreshold=50)],
            HiresFix=hires_fix("Latent", denoising_strength=0.5),
        ),
    ),
    ("apply_reference_style", (), {"MainModel": {"ModelCode": "fast-xl"}, "ImageList": [PNG, task_image(UID)]}),
    (
        "modify_masked_pixels",
        (),
        {"MainModel": {"ModelCode": "fast-xl"}, **masked_edit(PNG, PNG, only_masked=True, strength=0.6)},
    ),
    ("remove_contents", (), {"RawImage": PNG, "Mask": task_image(UID, 1), "MaskBlur": 4}),
    ("resize_image", (), {"Image": task_image(UID), "Scale": 2}),
    ("remove_background", (), {"RawImage": PNG, "OnlyMask": True, "Box": [0, 0, 2, 1]}),
    ("remove_backgrounds_in_batch", (), {"RawImages": [PNG, task_image(UID, 2)]}),
    ("restore_faces", (), {"RawImage": task_image(UID), "RestoreStrength": 0.7}),
    (
        "extract_contents",
        (),
        {"RawImage": PNG, "IncludePointList": [{"X": 1, "Y": 0}], "ExcludePointList": [{"X": 0, "Y": 0}]},
    ),
    ("describe_images", (), {"ImageList": [PNG, task_image(UID)], "TranslateDescription": "de"}),
    (
        "generate_backgrounds",
        (),
        {
            "MainModel": {"ModelCode": "fast-xl"},
            "ImageList": [task_image(UID), PNG],
            "TransparentForeground": {"ImageIndex": 0, "Scale": 0.5},
            "BackgroundImage2Image": {"ImageIndex": 1, "DeepFusion": True},
        },
    ),
    ("import_model", (), {"Url": "https://example.com/ink.safetensors", "Kind": "lora", "AuthToken": "hf_x"}),
    ("list_models", (), {}),
    ("list_controlnets", (), {}),
    ("list_tasks_details", ([UID, "other"],), {}),
    ("list_running_tasks", (), {}),
    ("get_credit_balance", (), {}),
    ("cancel_task", ([UID],), {}),
]
PLUMBING = {"call", "close", "download", "fetch", "signed", "wait"}


def recorder() -> tuple[httpx.MockTransport, list[tuple[str, str, dict[str, typing.Any]]]]:
    """A transport (sync and async) answering every action with REPLY, and what was sent to it."""
    sent: list[tuple[str, str, dict[str, typing.Any]]] = []

    def answer(sending: httpx.Request) -> httpx.Response:
        body = json.loads(sending.content)
        sent.append((sending.method, str(sending.url), body))
        return httpx.Response(200, json={"Action": body["Action"], "request_uuid": body["request_uuid"], **REPLY})

    return httpx.MockTransport(answer), sent


def async_on(handler: typing.Callable[[httpx.Request], typing.Any], **options: typing.Any) -> AsyncClient:
    return AsyncClient("http://picpik.test", "pub", "priv", transport=httpx.MockTransport(handler), **options)


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The delays AsyncClient slept (each made a yield to the loop, not a wait)."""
    delays: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float, result: typing.Any = None) -> typing.Any:
        delays.append(delay)
        return await sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    return delays


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_async_client_has_clients_methods_awaitable_with_the_same_signatures_and_docs():
    assert {name for name, _, _ in ACTIONS} == public(Client) - PLUMBING
    assert public(AsyncClient) == public(Client) - {"close"} | {"aclose"}
    for name in public(Client) - {"close", "signed"}:
        ours, theirs = getattr(AsyncClient, name), getattr(Client, name)
        assert inspect.iscoroutinefunction(ours), name
        assert inspect.signature(ours) == inspect.signature(theirs), name
        assert ours.__doc__ == theirs.__doc__, name
    assert inspect.signature(AsyncClient) == inspect.signature(Client)


@pytest.mark.parametrize(("method", "args", "kwargs"), ACTIONS, ids=[name for name, _, _ in ACTIONS])
def test_every_action_sends_clients_body_signed_and_returns_what_client_returns(method, args, kwargs):
    sync_transport, sync_sent = recorder()
    async_transport, async_sent = recorder()
    with Client("http://picpik.test", "pub", "priv", transport=sync_transport) as client:
        expected = getattr(client, method)(*args, **kwargs)
    async_client = AsyncClient("http://picpik.test", "pub", "priv", transport=async_transport)
    got = asyncio.run(getattr(async_client, method)(*args, **kwargs))

    assert got == expected and (expected is None) == (method == "cancel_task")
    ((sync_method, sync_url, sync_body),) = sync_sent
    ((async_method, async_url, async_body),) = async_sent
    assert (async_method, async_url) == (sync_method, sync_url) == ("POST", "http://picpik.test/")
    assert own_fields(async_body) == own_fields(sync_body) == ({"TaskUIDList": args[0]} if args else kwargs)
    assert async_body["Action"] == sync_body["Action"] and async_body["PublicKey"] == "pub"
    assert signature.verify(async_body, "priv") and async_body["request_uuid"] != sync_body["request_uuid"]


def test_a_generation_end_to_end_submit_wait_with_updates_fetch_and_download(stack: Stack, tmp_path):
    account = stack.api.portal.call(stack.repo.create_key, "async", 100_000)
    engine = FakeEngine(step_seconds=0.02)  # a few steps' time: `wait` polls a running task
    runtime = jobs.WorkerRuntime(repo=stack.repo, engine=engine, store=stack.store, name="async-worker")
    updates: list[dict[str, typing.Any]] = []

    async def scenario() -> tuple[typing.Any, ...]:
        # in the app's event loop (the TestClient's portal), where its in-memory queue lives
        transport = httpx.ASGITransport(app=stack.api.app)
        async with AsyncClient("http://testserver", account.public_key, account.private_key, transport=transport) as c:
            with pytest.raises(errors.ParamError, match="Width"):
                await c.generate_images_sdxl(**request(Width=1))
            uid = await c.generate_images_sdxl(**request(BatchSize=2))
            running = await c.list_running_tasks()
            worker = asyncio.create_task(process.work(stack.repo.app, runtime, stack.settings, True))
            detail = await c.wait(uid, timeout=30, poll=0.01, on_update=updates.append)
            await worker
            png = await c.fetch(detail["ImgList"][1])
            saved = await c.download(detail["ImgList"][1], tmp_path / "out" / "second.png")
            return uid, running, detail, png, saved, await c.get_credit_balance()

    uid, running, detail, png, saved, balance = stack.api.portal.call(scenario)

    assert running == [uid]
    assert detail["Status"] == "Finished" and detail["SeedList"] == [1, 2] and len(detail["ImgList"]) == 2
    statuses = [update["Status"] for update in updates]
    assert updates[-1] == detail and "Running" in statuses  # the worker ran while it polled
    assert statuses == sorted(statuses, key=["Queuing", "Running", "Finished"].index)
    progress = [update["Progress"] for update in updates]
    assert progress == sorted(progress)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (64, 72) and "Seed: 2" in image.text["parameters"]
    assert saved.read_bytes() == png
    assert balance["UsedCredits"] == detail["ConsumeApiPoint"] >= 1


RET_CODES = sorted({cls.ret_code for cls in errors.ALL if "ret_code" in vars(cls)} | {999})


@pytest.mark.parametrize("ret_code", RET_CODES)
def test_a_refusal_raises_the_class_of_its_ret_code_as_client_does(ret_code):
    def refuse(sending: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"RetCode": ret_code, "Message": f"refused {ret_code}"})

    with pytest.raises(errors.PicserveError) as raised:
        asyncio.run(async_on(refuse).list_tasks_details([UID]))
    with pytest.raises(errors.PicserveError) as expected:
        Client("http://picpik.test", "pub", "priv", transport=httpx.MockTransport(refuse)).list_tasks_details([UID])
    assert type(raised.value) is type(expected.value) is type(errors.from_ret_code(ret_code, ""))
    assert (raised.value.ret_code, raised.value.message) == (ret_code, f"refused {ret_code}")


def test_a_request_lost_in_transit_is_resent_as_it_was_after_the_backoff(slept):
    seen: list[bytes] = []

    async def lossy(sending: httpx.Request) -> httpx.Response:
        seen.append(sending.content)
        if len(seen) < 3:
            raise httpx.ConnectError("connection reset", request=sending)
        return httpx.Response(200, json={"RetCode": 0, "TaskUID": "t9"})

    assert asyncio.run(async_on(lossy).resize_image(Image=task_image(UID), Scale=2)) == "t9"
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2]  # the same request_uuid, the same signature
    assert json.loads(seen[0])["request_uuid"] and slept == [0.25, 0.5]


def test_resends_stop_after_retries_and_an_http_answer_is_never_resent(slept):
    seen: list[httpx.Request] = []

    def refused(sending: httpx.Request) -> httpx.Response:
        seen.append(sending)
        raise httpx.ConnectError("refused", request=sending)

    with pytest.raises(errors.TransportError, match=r"ConnectError: refused \(is picserve serving at"):
        asyncio.run(async_on(refused, retries=1).list_models())
    assert (len(seen), slept) == (2, [0.25])

    def bad_gateway(sending: httpx.Request) -> httpx.Response:
        seen.append(sending)
        return httpx.Response(502, text="bad gateway")

    seen.clear()
    with pytest.raises(errors.TransportError, match="HTTP 502: bad gateway"):
        asyncio.run(async_on(bad_gateway).list_models())
    assert (len(seen), slept) == (1, [0.25])


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(200, text="<html>"), "other than JSON"),
        (httpx.Response(200, json={"hello": 1}), "without a RetCode"),
        (httpx.Response(200, json=[1, 2]), "without a RetCode"),
        (httpx.Response(503, text=""), "HTTP 503: Service Unavailable"),
    ],
)
def test_an_answer_that_is_not_a_picpik_reply_is_a_transport_error(answer, message):
    with pytest.raises(errors.TransportError, match=message):
        asyncio.run(async_on(lambda sending: answer).list_models())


def test_fetch_of_an_expired_result_is_a_transport_error_naming_the_url():
    client = async_on(lambda sending: httpx.Response(404, json={"Message": "result not found or expired"}))
    with pytest.raises(errors.TransportError, match=re.escape("GET http://picpik.test/results/abc.png: HTTP 404")):
        asyncio.run(client.fetch("/results/abc.png"))


def test_wait_gives_up_with_a_wait_timeout_that_is_a_timeout_error():
    client = async_on(lambda sending: httpx.Response(200, json={"RetCode": 0, "TaskDetailList": [DETAIL]}))
    with pytest.raises(TimeoutError):
        asyncio.run(client.wait(UID, timeout=0, poll=0))
    with pytest.raises(errors.WaitTimeout, match=f"task {UID} still Running after 0 s"):
        asyncio.run(client.wait(UID, timeout=0, poll=0))


def test_wait_polls_every_poll_seconds_and_gives_on_update_every_detail(slept):
    statuses = iter(["Queuing", "Running", "Finished"])

    def poll(sending: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"RetCode": 0, "TaskDetailList": [{**DETAIL, "Status": next(statuses)}]})

    updates: list[typing.Any] = []
    detail = asyncio.run(async_on(poll).wait(UID, poll=0.2, on_update=updates.append))
    assert detail["Status"] == "Finished" and [u["Status"] for u in updates] == ["Queuing", "Running", "Finished"]
    assert slept == [0.2, 0.2]


def test_async_with_and_aclose_close_the_http_client():
    async def scenario() -> tuple[bool, bool, bool]:
        http = httpx.AsyncClient(transport=recorder()[0], base_url="http://picpik.test")
        async with AsyncClient("http://picpik.test", "pub", "priv", http=http) as client:
            assert await client.list_running_tasks() == [UID]
            open_inside = not http.is_closed
        other = AsyncClient("http://picpik.test", "pub", "priv", transport=recorder()[0])
        await other.aclose()
        return open_inside, http.is_closed, other._http.is_closed

    assert asyncio.run(scenario()) == (True, True, True)

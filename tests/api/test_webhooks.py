"""Webhooks on the in-memory stack: the Webhook field's checks, the key's default, the signature, and
deliveries made by the real delivery job (through an httpx MockTransport) as the trigger makes them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from picserve import errors
from picserve.api.app import create_app
from picserve.sdk import Client
from picserve.services import Services
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from picserve.webhooks import delivery, rules, signing
from picserve.webhooks.store import MemoryDeliveries

from .conftest import Stack, open_stack, request

#: a documentation range (never routed): allowed below, and answered by the MockTransport
HOOK = "http://198.51.100.7:8443/hooks/picserve?x=1"


def refusal(client: Client, **fields: Any) -> str:
    with pytest.raises(errors.PicserveError) as caught:
        client.call("GenerateImagesSDXL", **request(**fields))
    assert caught.value.ret_code == 160, caught.value
    return caught.value.message


@pytest.mark.parametrize(
    ("webhook", "expected"),
    [
        ({"Url": "ftp://example.com/x"}, "Webhook.Url: must be an http:// or https:// URL"),
        ({"Url": "http:///path"}, "Webhook.Url: the URL has no host"),
        ({"Url": "https://example.com/" + "a" * 2048}, "Webhook.Url: must be at most 2048 characters"),
        ({"Url": "http://exa mple.com/"}, "Webhook.Url: must not hold spaces"),
        ({"Url": "http://example.com:99999/"}, "Webhook.Url: not a valid URL"),
        ({"Url": ""}, "Webhook.Url: must not be empty"),
        ({"Url": 5}, "Webhook.Url: must be a JSON string"),
        ({}, "Webhook.Url: missing required field"),
        ({"Url": HOOK, "Events": []}, "Webhook.Events: must hold 1 to 3 items"),
        ({"Url": HOOK, "Events": ["finished"]}, "Webhook.Events[0]: must be one of start, progress, completed"),
        ({"Url": HOOK, "Events": "completed"}, "Webhook.Events: must be a JSON array"),
        ({"Url": HOOK, "Secret": "x"}, "Webhook.Secret: unknown field"),
        ("http://example.com", "Webhook: must be a JSON object"),
    ],
)
def test_an_invalid_webhook_is_refused_naming_the_field(client, webhook, expected):
    assert refusal(client, Webhook=webhook).startswith(expected)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
    ],
)
def test_a_private_address_is_refused(client, url):
    message = refusal(client, Webhook={"Url": url})
    assert message.startswith("Webhook.Url: host "), message
    assert "not a public address" in message and "PICSERVE_WEBHOOK_ALLOW" in message


def test_the_operator_allows_addresses_and_names(stack, settings):
    with open_stack(settings.evolve(webhook_allow="10.0.0.0/8, 127.0.0.1/32, hooks.internal")) as allowed:
        client = allowed.client(name="ops")
        for url in ("http://10.1.2.3/hook", "http://127.0.0.1:9000/hook", "https://hooks.internal/x"):
            uid = client.call("GenerateImagesSDXL", **request(Webhook={"Url": url, "Events": ["completed", "start"]}))
            (task,) = allowed.api.portal.call(allowed.repo.get_many, [uid["TaskUID"]], client.public_key)
            assert task.webhook is not None and (task.webhook.url, task.webhook.events) == (url, ("start", "completed"))
        assert refusal(client, Webhook={"Url": "http://192.168.1.1/"}).startswith("Webhook.Url: host '192.168.1.1'")


def test_a_bad_allow_setting_is_named():
    with pytest.raises(ValueError, match="'not a host!' is neither a CIDR nor a host name"):
        rules.parse_allow("10.0.0.0/8, not a host!")


def test_the_keys_default_webhook_applies_to_an_unchanged_picpik_request(stack: Stack):
    account = stack.api.portal.call(stack.repo.create_key, "picpik", 100_000)
    assert stack.api.portal.call(stack.repo.set_webhook, account.public_key, HOOK)
    client = Client("http://testserver", account.public_key, account.private_key, http=stack.api)
    uid = client.generate_images_sdxl(**request())  # no Webhook field: a PICPIK client as it is
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], account.public_key)
    assert task.webhook is not None and (task.webhook.url, task.webhook.events) == (HOOK, ("completed",))
    # the request's own webhook wins; clearing the default leaves none
    own = client.call("GenerateImagesSDXL", **request(Webhook={"Url": "https://8.8.8.8/own"}))["TaskUID"]
    assert stack.api.portal.call(stack.repo.get_many, [own], account.public_key)[0].webhook.url == "https://8.8.8.8/own"
    assert stack.api.portal.call(stack.repo.set_webhook, account.public_key, None)
    bare = client.generate_images_sdxl(**request())
    assert stack.api.portal.call(stack.repo.get_many, [bare], account.public_key)[0].webhook is None


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"TaskUID":"x","Event":"completed"}'
    expected = hmac.new(b"secret-key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signing.signature("secret-key", 1700000000, body) == f"sha256={expected}"
    headers = signing.headers("secret-key", "completed", "d-1", body, timestamp=1700000000)
    assert headers["X-Picserve-Signature"] == f"sha256={expected}"
    assert (headers["X-Picserve-Event"], headers["X-Picserve-Delivery"]) == ("completed", "d-1")
    assert signing.verify("secret-key", "1700000000", body, f"sha256={expected}", now=1700000100)
    assert not signing.verify("secret-key", "1700000000", body, f"sha256={expected}", now=1700000000 + 301)
    assert not signing.verify("secret-key", "1700000000", body + b" ", f"sha256={expected}", now=1700000000)
    assert not signing.verify("other-key", "1700000000", body, f"sha256={expected}", now=1700000000)


class Receiver:
    """A MockTransport receiver: records each request; answers 500 to the first `failures`."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[httpx.Request] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if len(self.requests) <= self.failures:
            return httpx.Response(500, text="not now")
        return httpx.Response(204)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture
def hooked(settings) -> Iterator[tuple[Stack, Receiver]]:
    configured = settings.evolve(webhook_allow="198.51.100.0/24", webhook_retry_delay=0.0, webhook_max_attempts=3)
    repo = InMemoryRepository(in_memory_app())
    store = MemoryStore(configured.result_ttl_seconds)
    receiver = Receiver(failures=1)
    worker = delivery.worker_for(
        configured, repo.app, MemoryDeliveries(repo), store, transport=httpx.MockTransport(receiver)
    )
    services = Services.build(configured, repo=repo, store=store, webhooks=worker)
    with TestClient(create_app(configured, services)) as api:
        api.portal.call(repo.app.open_async)
        yield Stack(api=api, repo=repo, store=store, settings=configured), receiver


def test_deliveries_are_signed_retried_and_completed_once(hooked):
    stack, receiver = hooked
    account = stack.api.portal.call(stack.repo.create_key, "hooks", 100_000)
    client = Client("http://testserver", account.public_key, account.private_key, http=stack.api)
    events = ["start", "progress", "completed"]
    done = client.call("GenerateImagesSDXL", **request(Webhook={"Url": HOOK, "Events": events}))["TaskUID"]
    stack.run_worker()
    canceled = client.call("GenerateImagesSDXL", **request(Webhook={"Url": HOOK}))["TaskUID"]
    client.call("CancelTask", TaskUIDList=[canceled])  # a queued task cancelled by the API: completed too
    services = stack.api.app.state.services
    for _ in range(5):  # the background worker delivers; the first answer is a 500, retried at once
        time.sleep(0.2)
        if len(receiver.requests) >= 4:
            break
    stack.api.portal.call(services.webhooks.run_once)
    seen = [(b["TaskUID"], b["Event"], b["Status"]) for b in receiver.bodies()]
    # the first request failed (500) and was sent again: same delivery id
    assert receiver.requests[0].headers["X-Picserve-Delivery"] == receiver.requests[1].headers["X-Picserve-Delivery"]
    assert sorted(set(seen)) == sorted(
        [(done, "start", "Running"), (done, "completed", "Finished"), (canceled, "completed", "Canceled")]
    ), seen
    for req in receiver.requests:
        assert req.url.host == "198.51.100.7" and req.headers["Host"] == "198.51.100.7:8443"
        assert req.url.path == "/hooks/picserve" and req.url.query == b"x=1"
        stamp = req.headers["X-Picserve-Timestamp"]
        assert signing.verify(account.private_key, stamp, req.content, req.headers["X-Picserve-Signature"])
        assert req.headers["X-Picserve-Event"] == json.loads(req.content)["Event"]
    finished = next(b for b in receiver.bodies() if b["Event"] == "completed" and b["TaskUID"] == done)
    assert finished["ImgList"] and finished["ImgList"][0].startswith("http://127.0.0.1:8080/results/")
    completed = [d for d in stack.repo.deliveries.values() if d.event == "completed"]
    assert sorted(d.task_uid for d in completed) == sorted([done, canceled])
    assert all(d.state == "delivered" and d.delivered_at is not None for d in stack.repo.deliveries.values())
    assert sum(d.attempts for d in stack.repo.deliveries.values()) == len(stack.repo.deliveries) + 1


def test_a_delivery_gives_up_after_its_attempts(settings):
    configured = settings.evolve(webhook_allow="198.51.100.0/24", webhook_retry_delay=0.0, webhook_max_attempts=2)
    repo = InMemoryRepository(in_memory_app())
    store = MemoryStore(configured.result_ttl_seconds)
    receiver = Receiver(failures=100)
    worker = delivery.worker_for(
        configured, repo.app, MemoryDeliveries(repo), store, transport=httpx.MockTransport(receiver)
    )
    services = Services.build(configured, repo=repo, store=store)  # no background worker: run below
    with TestClient(create_app(configured, services)) as api:
        api.portal.call(repo.app.open_async)
        account = api.portal.call(repo.create_key, "hooks", 100_000)
        client = Client("http://testserver", account.public_key, account.private_key, http=api)
        uid = client.call("GenerateImagesSDXL", **request(Webhook={"Url": HOOK}))["TaskUID"]
        client.call("CancelTask", TaskUIDList=[uid])
        api.portal.call(worker.run_once)
    (gave_up,) = repo.deliveries.values()
    assert (gave_up.state, gave_up.attempts, gave_up.last_error) == ("failed", 2, "HTTP 500: not now")
    assert len(receiver.requests) == 2


def test_a_delivery_to_an_address_no_longer_allowed_is_not_sent(settings):
    # allowed when submitted, refused when delivered (the operator changed the rule; or DNS changed)
    submitted = settings.evolve(webhook_allow="198.51.100.0/24")
    repo = InMemoryRepository(in_memory_app())
    store = MemoryStore(submitted.result_ttl_seconds)
    receiver = Receiver()
    worker = delivery.worker_for(
        settings, repo.app, MemoryDeliveries(repo), store, transport=httpx.MockTransport(receiver)
    )
    with TestClient(create_app(submitted, Services.build(submitted, repo=repo, store=store))) as api:
        api.portal.call(repo.app.open_async)
        account = api.portal.call(repo.create_key, "hooks", 100_000)
        client = Client("http://testserver", account.public_key, account.private_key, http=api)
        uid = client.call("GenerateImagesSDXL", **request(Webhook={"Url": HOOK}))["TaskUID"]
        client.call("CancelTask", TaskUIDList=[uid])
        api.portal.call(worker.run_once)
    (refused,) = repo.deliveries.values()
    assert refused.state == "failed" and "not a public address" in (refused.last_error or "")
    assert receiver.requests == []


def test_a_cancelled_runner_stops_even_when_procrastinates_loop_ends_on_an_error(settings, monkeypatch):
    """The API stopping cancels the runner while its database closes: procrastinate's loop may then end
    on an error of its own instead of the cancel. The runner must stop, not restart its loop for ever
    (which held the API's event loop shutdown, and a test's TestClient exit, until a timeout)."""
    import asyncio

    repo = InMemoryRepository(in_memory_app())
    runner = delivery.worker_for(settings, repo.app, MemoryDeliveries(repo), MemoryStore(60))
    started: list[int] = []

    class Loop:
        async def run(self) -> None:
            started.append(1)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise RuntimeError("Database error.") from None  # what the cancel became

    monkeypatch.setattr(runner, "_worker", lambda burst: Loop())

    async def scenario() -> None:
        task = asyncio.create_task(runner.run_forever())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert started == [1]  # stopped: not started again

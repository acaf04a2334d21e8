"""Standard Webhooks end to end on the in-memory stack: the key's owner gets the webhook secret from
`picserve keys create` (and `keys webhook-secret`), and real deliveries, posted over HTTP to a receiver
on 127.0.0.1 by the real delivery job, verify with the reference library `standardwebhooks`; the
deprecated X-Picserve-* headers are still there and valid."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from picserve import cli
from picserve.api.app import create_app
from picserve.sdk import Client
from picserve.services import Services
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from picserve.webhooks import delivery, signing
from picserve.webhooks.store import MemoryDeliveries
from tests.webhook_receiver import Receiver, receiving

from .conftest import Stack, request


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Answers 500 to the first delivery it gets (retried), 200 to the rest."""
    with receiving(fail_first=1) as server:
        yield server


def test_a_real_delivery_verifies_with_the_standardwebhooks_library(settings, receiver, monkeypatch, tmp_path):
    configured = settings.evolve(webhook_allow="127.0.0.1/32", webhook_retry_delay=0.0, webhook_max_attempts=3)
    repo = InMemoryRepository(in_memory_app())
    store = MemoryStore(configured.result_ttl_seconds)
    worker = delivery.worker_for(configured, repo.app, MemoryDeliveries(repo), store)  # real HTTP
    with TestClient(create_app(configured, Services.build(configured, repo=repo, store=store))) as api:
        api.portal.call(repo.app.open_async)
        stack = Stack(api=api, repo=repo, store=store, settings=configured)
        # the key's owner gets the key pair and its webhook secret from the operator's `keys create`
        monkeypatch.setattr("picserve.cli.keys.with_repo", lambda settings, action: api.portal.call(action, repo))
        made = CliRunner().invoke(cli.app, ["keys", "create", "--name", "hooks", "--data-dir", tmp_path / "data"])
        assert made.exit_code == 0, made.output
        key = json.loads(made.output)
        secret = key["WebhookSecret"]
        assert secret.startswith("whsec_") and secret == signing.standard_secret(key["PrivateKey"])
        shown = CliRunner().invoke(
            cli.app, ["keys", "webhook-secret", key["PublicKey"], "--data-dir", tmp_path / "data"]
        )
        assert (shown.exit_code, shown.output.strip()) == (0, secret), shown.output
        unknown = CliRunner().invoke(cli.app, ["keys", "webhook-secret", "nope", "--data-dir", tmp_path / "data"])
        assert unknown.exit_code == 1 and "no key nope" in unknown.output

        client = Client("http://testserver", key["PublicKey"], key["PrivateKey"], http=api)
        hook = {"Url": receiver.url, "Events": ["start", "completed"]}
        uid = client.call("GenerateImagesSDXL", **request(Webhook=hook))["TaskUID"]
        stack.run_worker()
        for _ in range(5):  # the first answer is a 500: retried at once (the run may end before it)
            api.portal.call(worker.run_once)
            if all(d.state != "pending" for d in repo.deliveries.values()):
                break

    received = [(r["headers"], r["body"]) for r in receiver.received]
    assert len(received) == 3, [(h["webhook-id"], json.loads(b)["Event"]) for h, b in received]
    # the refused first one was sent again: the same delivery, so the same webhook-id, signed again
    ids = [headers["webhook-id"] for headers, _ in received]
    assert ids.count(ids[0]) == 2 and len(set(ids)) == 2, ids
    events = []
    for headers, body in received:
        detail = Webhook(secret).verify(body, headers)  # raises WebhookVerificationError if not
        assert detail["TaskUID"] == uid and detail["Event"] == headers["X-Picserve-Event"]
        events.append((detail["Event"], detail["Status"]))
        # the deprecated headers, beside the standard ones, for one release
        assert headers["X-Picserve-Delivery"] == headers["webhook-id"]
        assert headers["X-Picserve-Timestamp"] == headers["webhook-timestamp"]
        assert signing.verify(key["PrivateKey"], headers["X-Picserve-Timestamp"], body, headers["X-Picserve-Signature"])
        assert signing.verify_standard(secret, headers, body)
    assert sorted(set(events)) == [("completed", "Finished"), ("start", "Running")], events
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(signing.standard_secret("some-other-key")).verify(received[-1][1], received[-1][0])

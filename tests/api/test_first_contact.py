"""What a new user meets first, through HTTP and the SDK: messages that say what to do (the URL tried, the
key named as the likeliest cause of a bad signature, whitespace around keys, the JSON content type), and
the server log's one line per refused request (never a secret; accepted requests at debug level only)."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from picserve import errors, supervisor
from picserve.api import auth
from picserve.config import Settings
from picserve.protocol import signature
from picserve.sdk import Client
from picserve.tasks import embedded_pg
from tests.api.conftest import request
from tests.processes import free_port

REQUESTS_LOG = "picserve.api.requests"


def signed(public_key: str, private_key: str, action: str = "ListModels", **params: object) -> dict[str, object]:
    body: dict[str, object] = {"Action": action, "PublicKey": public_key, "request_uuid": str(uuid.uuid4()), **params}
    body["Signature"] = signature.sign(body, private_key)
    return body


def account_of(stack, name: str = "newcomer"):
    return stack.api.portal.call(stack.repo.create_key, name, 100_000)


def test_a_wrong_private_key_is_named_before_the_signing_rule(stack):
    account = account_of(stack)
    reply = stack.api.post("/", json=signed(account.public_key, "not-" + account.private_key)).json()
    assert reply["RetCode"] == 170 and reply["Message"] == auth.SIGNATURE_MISMATCH
    message = reply["Message"]
    assert message.startswith("Signature does not match. Most likely the PrivateKey you signed with is not this")
    assert message.index("no space or newline") < message.index("SHA-1") < message.index("keys sorted")


def test_a_public_key_with_whitespace_around_it_gets_that_hint(stack):
    account = account_of(stack)
    reply = stack.api.post("/", json=signed(f"{account.public_key}\n", account.private_key)).json()
    assert reply["RetCode"] == 171
    assert "has spaces or a newline around it" in reply["Message"], reply
    unknown = stack.api.post("/", json=signed("no-such-key", "k")).json()
    assert unknown["RetCode"] == 171 and unknown["Message"] == "PublicKey 'no-such-key' is unknown or revoked"


def test_a_form_content_type_names_the_header_to_send(stack):
    account = account_of(stack)
    body = signed(account.public_key, account.private_key)
    reply = stack.api.post("/", data=body).json()  # what curl -d sends: application/x-www-form-urlencoded
    assert reply["RetCode"] == 160
    assert "send the header `Content-Type: application/json`" in reply["Message"], reply


def test_the_sdk_strips_whitespace_around_the_keys(stack):
    account = account_of(stack)
    padded = Client("http://testserver", f"  {account.public_key}\n", f"{account.private_key}\r\n", http=stack.api)
    assert padded.public_key == account.public_key
    assert padded.get_credit_balance()["TotalCredits"] == 100_000


def test_the_sdk_names_the_url_it_could_not_reach():
    base = f"http://127.0.0.1:{free_port()}"
    with Client(base, "p", "k", retries=0) as client, pytest.raises(errors.TransportError) as caught:
        client.list_models()
    assert caught.value.message.startswith(f"POST {base}/ failed: ConnectError")
    assert caught.value.message.endswith(f"(is picserve serving at {base}?)")


def test_every_refusal_is_logged_once_without_secrets(stack, caplog):
    account = account_of(stack)
    caplog.set_level(logging.DEBUG, logger=REQUESTS_LOG)
    wrong = signed(account.public_key, "the-wrong-private-key")
    stack.api.post("/", json=wrong)
    stack.api.post("/", json=signed(account.public_key, account.private_key, "GenerateImagesSDXL", Width=63))

    refusals = [r for r in caplog.records if r.name == REQUESTS_LOG and r.levelno >= logging.INFO]
    assert [r.getMessage().split(":")[0] for r in refusals] == [
        f"refused ListModels from key {account.public_key[:8]}…",
        f"refused GenerateImagesSDXL from key {account.public_key[:8]}…",
    ]
    assert refusals[0].levelno == logging.WARNING and "RetCode 170: Signature does not match" in refusals[0].message
    assert refusals[1].levelno == logging.INFO and "RetCode 160: " in refusals[1].message
    assert (refusals[0].action, refusals[0].ret_code) == ("ListModels", 170)
    logged = caplog.text
    assert account.private_key not in logged and str(wrong["Signature"]) not in logged
    assert account.public_key not in logged  # only its first characters


def test_a_quoted_signature_never_reaches_the_log(stack, caplog):
    account = account_of(stack)
    caplog.set_level(logging.INFO, logger=REQUESTS_LOG)
    body = signed(account.public_key, account.private_key)
    body["Signature"] = "x" * 5000  # too long: the refusal may describe it
    reply = stack.api.post("/", json=body).json()
    assert reply["RetCode"] != 0
    assert "x" * 40 not in caplog.text and "refused ListModels" in caplog.text


def test_accepted_requests_are_logged_at_debug_only(stack, caplog):
    account = account_of(stack)
    caplog.set_level(logging.DEBUG, logger=REQUESTS_LOG)
    submitted = stack.api.post(
        "/", json=signed(account.public_key, account.private_key, "GenerateImagesSDXL", **request())
    )
    uid = submitted.json()["TaskUID"]
    stack.api.post("/", json=signed(account.public_key, account.private_key, "ListTasksDetails", TaskUIDList=[uid]))
    lines = [r for r in caplog.records if r.name == REQUESTS_LOG]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.DEBUG]
    assert lines[0].getMessage() == f"GenerateImagesSDXL from key {account.public_key[:8]}…: RetCode 0 (TaskUID {uid})"


def test_openai_route_refusals_are_logged_too(stack, caplog):
    account = account_of(stack)
    caplog.set_level(logging.INFO, logger=REQUESTS_LOG)
    headers = {"Authorization": f"Bearer {account.public_key}.wrong-private-key"}
    stack.api.post("/v1/images/generations", json={"prompt": "a cat"}, headers=headers)
    (line,) = [r for r in caplog.records if r.name == REQUESTS_LOG]
    assert line.getMessage().startswith(f"refused POST /v1/images/generations from key {account.public_key[:8]}…: ")
    assert "wrong-private-key" not in caplog.text


@pytest.mark.parametrize(
    ("level", "flag", "expected"),
    [
        ("info", None, False),
        ("warning", None, False),
        ("debug", None, True),
        ("info", True, True),
        ("debug", False, False),
    ],
)
def test_uvicorn_access_lines_are_off_unless_asked_for(monkeypatch, level, flag, expected):
    import contextlib

    import uvicorn

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(kwargs))
    monkeypatch.setattr(embedded_pg, "database", lambda settings: contextlib.nullcontext("postgresql://db"))
    monkeypatch.setattr(supervisor, "Supervisor", lambda *args: type("S", (), {"stop": lambda self: None})())
    monkeypatch.setattr("picserve.api.app.create_app", lambda settings: None)
    supervisor.serve(Settings.load(env={}, workers=0, log_level=level), access_log=flag)
    assert ran["access_log"] is expected


def test_the_transport_error_of_a_non_200_names_the_url():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="not here")

    client = Client("http://picpik.test/base", "p", "k", transport=httpx.MockTransport(handler))
    with pytest.raises(errors.TransportError, match=r"POST http://picpik.test/base/: HTTP 404"):
        client.list_models()


def test_a_callers_strings_never_make_log_lines_of_their_own(stack, caplog):
    caplog.set_level(logging.INFO, logger=REQUESTS_LOG)
    forged = "ListModels\n2026-01-01 00:00:00 INFO forged: all is well"
    stack.api.post("/", json=signed("key\nwith-newline", "k", action=forged))
    (line,) = [r for r in caplog.records if r.name == REQUESTS_LOG]
    assert "\n" not in line.getMessage() and "\\n2026-01-01" in line.getMessage()

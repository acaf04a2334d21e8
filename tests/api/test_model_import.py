"""ImportModel through signed raw JSON: an admin key has the server download a model from a loopback
file server and file it as `picserve models add` does; any other key is refused (172) and nothing is
queued; the token goes to the file's host and is stored nowhere in clear; a refused file ends the task
with ErrorCode 506 and files nothing, as does one over PICSERVE_IMPORT_MAX_BYTES (its partial download
removed); bad fields are refused at submit naming them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from picserve import domain, download, errors
from picserve.protocol import signature
from tests.api.conftest import Stack, open_stack
from tests.unit.test_modelfiles import KOHYA_LORA, TRIGGER_METADATA, server, write_safetensors

__all__ = ["server"]  # the loopback file server fixture (Range, ETag; records each request's headers)

TOKEN = "hf_SeCrEtToKeN0123456789"


def post(stack: Stack, account: domain.Account, action: str, **params: Any) -> dict[str, Any]:
    """A signed raw JSON request, as any PICPIK client sends it."""
    body: dict[str, Any] = {"Action": action, "PublicKey": account.public_key, **params}
    body["Signature"] = signature.sign(body, account.private_key)
    reply: dict[str, Any] = stack.api.post("/", json=body).json()
    return reply


def key(stack: Stack, admin: bool) -> domain.Account:
    return stack.api.portal.call(lambda: stack.repo.create_key("op" if admin else "user", 1000, admin=admin))


@pytest.fixture
def lora(tmp_path: Path) -> bytes:
    return write_safetensors(tmp_path / "src" / "ink.safetensors", KOHYA_LORA, TRIGGER_METADATA).read_bytes()


def detail(stack: Stack, account: domain.Account, uid: str) -> dict[str, Any]:
    reply = post(stack, account, "ListTasksDetails", TaskUIDList=[uid])
    assert reply["RetCode"] == 0, reply
    found: dict[str, Any] = reply["TaskDetailList"][0]
    return found


def stored(stack: Stack, account: domain.Account, uid: str) -> str:
    """Everything the task's row holds, as text."""
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], account.public_key)
    return json.dumps(task.spec.to_dict()) + task.error_message + " ".join(task.result_texts)


def test_an_admin_key_imports_a_model_with_its_token_and_the_token_is_stored_nowhere(stack, server, lora):
    server.files["/files/ink-style.safetensors"] = lora
    admin = key(stack, admin=True)
    url = server.url("/files/ink-style.safetensors?download=1&token=" + TOKEN)
    reply = post(
        stack, admin, "ImportModel", Url=url, AuthToken=TOKEN, Sha256=hashlib.sha256(lora).hexdigest(), Kind="lora"
    )
    assert reply["RetCode"] == 0, reply
    uid = reply["TaskUID"]
    assert TOKEN not in stored(stack, admin, uid)  # queued: the URL's token and the AuthToken are sealed

    stack.run_worker()

    task = detail(stack, admin, uid)
    assert (task["Status"], task["ErrorCode"], task["ImgList"], task["ConsumeApiPoint"]) == ("Finished", 0, [], 0)
    assert task["Progress"] == 1.0
    assert task["TxtList"][0].startswith(f"lora ink-style: SDXL kohya, sha256 {hashlib.sha256(lora).hexdigest()}")
    filed = stack.settings.models_dir / "lora" / "ink-style.safetensors"
    assert filed.read_bytes() == lora
    sidecar = json.loads(filed.with_suffix(".json").read_text())
    assert sidecar["Source"] == server.url("/files/ink-style.safetensors?download=1")  # no token
    assert sidecar["TriggerWordList"] == ["zxc style"]
    assert server.requests[-1]["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in stored(stack, admin, uid) + json.dumps(task)
    models = post(stack, admin, "ListModels")
    assert "ink-style" in models["LoraModels"]


def test_a_key_that_is_not_an_admin_is_refused_and_nothing_is_queued(stack, server, lora):
    server.files["/files/ink.safetensors"] = lora
    user = key(stack, admin=False)
    reply = post(stack, user, "ImportModel", Url=server.url("/files/ink.safetensors"))
    assert reply["RetCode"] == 172, reply
    assert "admin key" in reply["Message"]
    assert post(stack, user, "ListRunningTasks")["TaskUIDList"] == []
    stack.run_worker()
    assert server.requests == [] and not (stack.settings.models_dir / "lora" / "ink.safetensors").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Url", "ftp://127.0.0.1/x.safetensors", "Url: must be an http:// or https:// URL"),
        ("Url", "/etc/passwd", "Url: must be an http:// or https:// URL"),
        ("Sha256", "abc", "Sha256: must be 64 hexadecimal digits"),
        ("Kind", "checkpoint", "Kind: must be one of main, lora"),
        ("ModelCode", "../escape", "ModelCode: must be a plain file name"),
        ("Force", "yes", "Force: must be a JSON bool"),
        ("AuthToken", "", "AuthToken: must not be empty"),
    ],
)
def test_bad_fields_are_refused_at_submit_naming_them(stack, field, value, message):
    params = {"Url": "http://127.0.0.1:9/x.safetensors", field: value}
    reply = post(stack, key(stack, admin=True), "ImportModel", **params)
    assert (reply["RetCode"], reply["Message"][: len(message)]) == (160, message)


def test_a_refused_file_ends_the_task_506_files_nothing_and_the_message_holds_no_token(stack, server, lora):
    server.files["/files/ink.safetensors"] = lora
    admin = key(stack, admin=True)
    wrong = "0" * 64
    url = server.url("/files/ink.safetensors?token=" + TOKEN)
    uids = [
        post(stack, admin, "ImportModel", Url=url, Sha256=wrong)["TaskUID"],
        post(stack, admin, "ImportModel", Url=server.url("/files/missing.safetensors?token=" + TOKEN))["TaskUID"],
    ]
    stack.run_worker()
    tasks = [detail(stack, admin, uid) for uid in uids]
    assert [(t["Status"], t["ErrorCode"]) for t in tasks] == [("Error", 506), ("Error", 506)]
    assert "sha256 mismatch" in tasks[0]["ErrorMassage"]
    assert "HTTP 404" in tasks[1]["ErrorMassage"]
    assert all(TOKEN not in t["ErrorMassage"] and TOKEN not in stored(stack, admin, t["TaskUID"]) for t in tasks)
    assert not (stack.settings.models_dir / "lora" / "ink.safetensors").exists()


def test_a_file_over_the_import_limit_is_refused_and_its_partial_download_removed(settings, server, lora):
    server.files["/files/ink.safetensors"] = lora
    with open_stack(settings.evolve(import_max_bytes=len(lora) - 1)) as limited:
        admin = key(limited, admin=True)
        uid = post(limited, admin, "ImportModel", Url=server.url("/files/ink.safetensors"))["TaskUID"]
        limited.run_worker()
        task = detail(limited, admin, uid)
        assert (task["Status"], task["ErrorCode"]) == ("Error", 506)
        assert f"the file is {len(lora):,} bytes, over the limit of {len(lora) - 1:,} bytes" in task["ErrorMassage"]
        assert list((limited.settings.models_dir / ".downloads").glob("*")) == []  # no .part left to resume
        assert not (limited.settings.models_dir / "lora" / "ink.safetensors").exists()


def test_a_download_without_a_length_is_stopped_once_it_passes_the_limit(tmp_path):
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            sent.append(1)
            yield b"\0" * 1000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())  # streamed: no Content-Length

    with httpx.Client(transport=httpx.MockTransport(handler)) as client, pytest.raises(errors.PullError) as refused:
        download.fetch("http://files.test/big.bin", tmp_path, client=client, progress=False, max_bytes=2500)
    assert "the file is more than 3,000 bytes, over the limit of 2,500 bytes" in refused.value.message
    assert len(sent) == 3 and list(tmp_path.glob("*")) == []

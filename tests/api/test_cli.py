"""The `picserve` command line: its parsing, and the client commands (generate, tasks show/cancel)
against an in-process picserve (the API on the in-memory repository, the real worker loop, FakeEngine)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import typer
from typer.testing import CliRunner

import picserve
from picserve import cli, domain
from picserve.cli.generate import lora_ref, request_params
from picserve.sdk import Client
from tests.api.conftest import MODEL, Stack, open_stack, request
from tests.processes import free_port

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "keys", "models", "generate", "demo"):
        assert command in result.output


@pytest.mark.parametrize(
    ("item", "ref"),
    [
        ("style", {"ModelCode": "style"}),
        ("style:0.5", {"ModelCode": "style", "InferenceParams": {"LoraWeight": 0.5}}),
        ("x:-1", {"ModelCode": "x", "InferenceParams": {"LoraWeight": -1.0}}),
    ],
)
def test_lora_values(item, ref):
    assert lora_ref(item) == ref


@pytest.mark.parametrize("item", ["style:heavy", ":0.5"])
def test_bad_lora_values_are_refused(item):
    with pytest.raises(typer.BadParameter):
        lora_ref(item)


def test_generate_refuses_a_bad_lora_before_any_network():
    args = ["generate", "cat", "--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]
    result = runner.invoke(cli.app, [*args, "--model", "m", "--lora", "style:heavy"])
    assert result.exit_code == 2 and "must be a number" in result.output


def test_generate_reports_an_unreachable_server(instant_resends):
    args = ["generate", "cat", "--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]
    result = runner.invoke(cli.app, [*args, "--model", "m"])
    assert result.exit_code == 3 and "unreachable:" in result.output  # exit codes: see picserve/cli/watch.py


# --- the client commands against an in-process picserve (the fast tier: FakeEngine, in-memory) ---------


class _Shared(Client):
    """An SDK client on the in-process app whose `close` leaves the app's TestClient open."""

    def close(self) -> None:
        pass


@pytest.fixture
def served(models_folder, settings, monkeypatch) -> Iterator[Stack]:
    """The in-process picserve, its main model's sidecar giving defaults a CLI must not override, and
    `picserve.sdk.Client` made to reach it (the commands build their clients themselves)."""
    sidecar = {"Name": "Fast XL", "InferenceParams": {"Steps": 6, "CFGScale": 5.0, "Sampler": "DPM++ 2M Karras"}}
    (models_folder / "main" / f"{MODEL}.json").write_text(json.dumps(sidecar))
    with open_stack(settings) as stack:
        monkeypatch.setattr(
            "picserve.sdk.Client",
            lambda url, public_key, private_key, **_: _Shared(url, public_key, private_key, http=stack.api),
        )
        yield stack


@contextmanager
def worker_running(stack: Stack) -> Iterator[None]:
    """The real worker loop, run over and over in a thread for the block (jobs queued meanwhile run)."""
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            stack.run_worker()
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def keys_of(stack: Stack, name: str = "cli") -> tuple[list[str], domain.Account]:
    account = stack.api.portal.call(stack.repo.create_key, name, 100_000)
    args = ["--url", "http://testserver", "--public-key", account.public_key, "--private-key", account.private_key]
    return args, account


def spec_of(stack: Stack, uid: str, account: domain.Account) -> domain.GenerationSpec:
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], account.public_key)
    assert isinstance(task.spec, domain.GenerationSpec)
    return task.spec


def test_generate_sends_only_what_was_given_and_the_models_defaults_apply(served, tmp_path):
    keys, account = keys_of(served)
    with worker_running(served):
        result = runner.invoke(
            cli.app,
            ["generate", "a cat", "--model", MODEL, "--width", "64", "--height", "72", *keys, "--out", tmp_path],
        )
    assert result.exit_code == 0, result.output
    (uid,) = re.findall(r"^task (\w+)$", result.output, re.M)
    spec = spec_of(served, uid, account)
    # the sidecar's defaults, not the 20 steps / Euler / CFG 7.5 the CLI used to force
    assert (spec.steps, spec.cfg_scale, spec.sampler) == (6, 5.0, "DPM++ 2M Karras")
    assert len(list(tmp_path.glob(f"{uid}-*.png"))) == 1


def test_generate_sends_the_options_given():
    params = request_params("a cat", "m", steps=30, cfg=4.0, seed=7, width=512)
    assert params == {
        "MainModel": {"ModelCode": "m", "InferenceParams": {"Steps": 30, "CFGScale": 4.0}},
        "PositivePrompts": ["a cat"],
        "Width": 512,
        "Seed": 7,
    }
    assert request_params("a cat", "m") == {"MainModel": {"ModelCode": "m"}, "PositivePrompts": ["a cat"]}


def test_keys_are_stripped_of_whitespace_around_them(served, tmp_path):
    _, account = keys_of(served)
    padded = ["--url", "http://testserver", "--public-key", f" {account.public_key}\n"]
    padded += ["--private-key", f"{account.private_key} "]
    with worker_running(served):
        result = runner.invoke(cli.app, ["generate", "a cat", "--model", MODEL, *padded, "--out", tmp_path])
    assert result.exit_code == 0, result.output


def test_tasks_show_exits_1_for_a_cancelled_task_and_cancel_says_an_ended_task_ended(served):
    keys, _ = keys_of(served)
    uid = served.client().generate_images_sdxl(**request())  # another key's task: not shown to this one
    mine = runner.invoke(cli.app, ["generate", "a cat", "--model", MODEL, *keys, "--timeout", "0"])
    assert mine.exit_code == 4, mine.output  # timed out: nothing runs the queue yet
    (task,) = re.findall(r"^task (\w+)$", mine.output, re.M)

    cancelled = runner.invoke(cli.app, ["tasks", "cancel", task, *keys])
    assert cancelled.exit_code == 0 and f"cancel requested: {task}" in cancelled.output, cancelled.output
    shown = runner.invoke(cli.app, ["tasks", "show", task, *keys])
    assert shown.exit_code == 1, shown.output
    assert f"{task}  Canceled" in shown.output and f"task {task} ended Canceled" in shown.output

    again = runner.invoke(cli.app, ["tasks", "cancel", task, *keys])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == f"{task}: already ended (Canceled), nothing to cancel"

    other = runner.invoke(cli.app, ["tasks", "cancel", uid, *keys])
    assert other.exit_code == 2 and "RetCode 230" in other.output, other.output


def test_tasks_show_exits_0_for_a_finished_task(served, tmp_path):
    keys, _ = keys_of(served)
    with worker_running(served):
        made = runner.invoke(cli.app, ["generate", "a cat", "--model", MODEL, *keys, "--out", tmp_path])
    (task,) = re.findall(r"^task (\w+)$", made.output, re.M)
    shown = runner.invoke(cli.app, ["tasks", "show", task, *keys])
    assert shown.exit_code == 0 and f"{task}  Finished" in shown.output, shown.output


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"picserve {picserve.__version__}"


def flat(output: str) -> str:
    """Output with rich's boxes and line wrapping taken out."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


def test_tasks_list_refuses_an_unknown_status_before_the_database():
    result = runner.invoke(cli.app, ["tasks", "list", "--status", "done"])
    assert result.exit_code == 2 and "Queuing, Running, Finished, Error, Canceled" in flat(result.output)


def test_tasks_list_has_a_header_and_takes_a_status_in_any_case(served, monkeypatch, tmp_path):
    monkeypatch.setattr(
        "picserve.cli.tasks.with_repo", lambda settings, action: served.api.portal.call(action, served.repo)
    )
    keys, account = keys_of(served)
    with worker_running(served):
        made = runner.invoke(cli.app, ["generate", "a cat", "--model", MODEL, "--batch", "2", *keys, "--out", tmp_path])
    (task,) = re.findall(r"^task (\w+)$", made.output, re.M)
    queued = served.client().generate_images_sdxl(**request())

    listed = runner.invoke(cli.app, ["tasks", "list", "--status", "finished", "--data-dir", tmp_path / "data"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == ["TASK", "STATUS", "MODEL", "SIZE", "STEPS", "IMAGES", "KEY", "CREATED", "WORKER", "ERROR"]
    cells = row.split()
    assert cells[:6] == [task, "Finished", MODEL, "1024x1024", "6", "2"] and cells[6] == f"{account.public_key[:12]}…"
    assert queued not in listed.output
    both = runner.invoke(cli.app, ["tasks", "list", "--status", "QUEUING", "--status", "Finished", "--json"])
    assert {json.loads(line)["TaskUID"] for line in both.output.splitlines()} == {task, queued}


# --- first-contact messages --------------------------------------------------------------------------


def test_an_unreachable_server_is_named_with_its_url(instant_resends):
    port = free_port()
    args = ["generate", "cat", "--url", f"http://127.0.0.1:{port}", "--public-key", "p", "--private-key", "k"]
    result = runner.invoke(cli.app, [*args, "--model", "m"])
    assert result.exit_code == 3, result.output
    assert f"unreachable: POST http://127.0.0.1:{port}/ failed: ConnectError" in result.output
    assert f"is picserve serving at http://127.0.0.1:{port}?" in result.output


def test_a_wrong_private_key_is_named_as_the_likeliest_cause(served):
    _, account = keys_of(served)
    args = ["--url", "http://testserver", "--public-key", account.public_key, "--private-key", "not-the-key"]
    result = runner.invoke(cli.app, ["tasks", "show", "x", *args])
    assert result.exit_code == 2, result.output
    message = flat(result.output)
    assert "RetCode 170" in message and "Signature does not match" in message
    # the key first, the signing rule after
    assert message.index("is not this PublicKey's") < message.index("SHA-1")


def test_the_operator_cancels_any_keys_task_from_the_database(served, monkeypatch, tmp_path):
    monkeypatch.setattr(
        "picserve.cli.tasks.with_repo", lambda settings, action: served.api.portal.call(action, served.repo)
    )
    queued = served.client().generate_images_sdxl(**request())  # some key's task
    cancelled = runner.invoke(cli.app, ["tasks", "cancel", queued, "--operator", "--data-dir", tmp_path / "data"])
    assert cancelled.exit_code == 0 and cancelled.output.strip() == f"cancel requested: {queued}", cancelled.output
    (task,) = served.api.portal.call(served.repo.list_tasks, [], None, None, 10)
    assert task.status is domain.TaskStatus.CANCELED

    again = runner.invoke(cli.app, ["tasks", "cancel", queued, "nope", "--operator", "--data-dir", tmp_path / "data"])
    assert again.exit_code == 1, again.output
    assert f"{queued}: already ended (Canceled), nothing to cancel" in again.output
    assert "no such task: nope" in again.output


def test_a_client_cancel_needs_the_keys(monkeypatch):
    monkeypatch.delenv("PICSERVE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("PICSERVE_PRIVATE_KEY", raising=False)
    result = runner.invoke(cli.app, ["tasks", "cancel", "x"])
    assert result.exit_code == 2 and "--operator" in flat(result.output)

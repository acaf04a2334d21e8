"""Structured logs (logs.py): PICSERVE_LOG_FORMAT=json gives one JSON object per line, with the task,
the public key and the model when known, and never a private key."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from picserve import logs
from picserve.config import Settings
from tests.api.conftest import MODEL, models_folder, request, settings, stack  # noqa: F401


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What picserve logs at INFO while the test runs, through the JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root, ours = logging.getLogger(), logging.getLogger("picserve")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def parsed(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_task_logs_json_lines_with_its_task_key_and_model(stack, json_lines):  # noqa: F811
    account = stack.api.portal.call(stack.repo.create_key, "alice", 100_000)
    from picserve.sdk import Client

    client = Client("http://testserver", account.public_key, account.private_key, http=stack.api)
    uid = client.generate_images_sdxl(**request())
    stack.run_worker()

    lines = parsed(json_lines)  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    queued = next(line for line in lines if line["message"] == f"task {uid} queued")
    assert (queued["task_uid"], queued["key"], queued["model"], queued["level"]) == (
        uid,
        account.public_key,
        MODEL,
        "INFO",
    )
    assert queued["logger"] == "picserve.tasks.service"

    # the worker's lines about the task: its UID, model, worker and attempt, and the seconds since it began
    ended = next(line for line in lines if line["message"].startswith(f"task {uid} finished"))
    assert (ended["task_uid"], ended["model"], ended["worker"], ended["attempt"]) == (uid, MODEL, "fast-worker", 1)
    assert ended["duration"] >= 0
    assert account.private_key not in json_lines.getvalue()


def test_extra_fields_win_over_the_context_and_unknown_fields_are_refused():
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("picserve.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.duration = 1.5
    with logs.context(task_uid="t1", model="m"):
        line = json.loads(formatter.format(record))
    assert line["message"] == "hello world" and line["level"] == "WARNING" and line["logger"] == "picserve.x"
    assert (line["task_uid"], line["model"], line["duration"]) == ("t1", "m", 1.5)
    assert line["time"].endswith("+00:00")
    assert "task_uid" not in json.loads(formatter.format(record))  # the context ended with its block
    with pytest.raises(ValueError, match="not a log context field: private_key"):
        logs.bind(private_key="x")


def test_a_traceback_stays_on_one_line():
    formatter = logs.JsonFormatter()
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("picserve", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert "\n" not in text
    assert "RuntimeError: boom" in json.loads(text)["exception"]


def test_log_format_setting_and_its_check():
    assert Settings.load({}).log_format == "text"
    assert Settings.load({"PICSERVE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ValueError, match="PICSERVE_LOG_FORMAT: must be one of text, json, got 'xml'"):
        logs.configure("info", "xml")

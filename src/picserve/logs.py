"""Logging setup: plain text lines (the default) or one JSON object per line (`PICSERVE_LOG_FORMAT=json`).

A JSON line holds `time` (UTC, ISO 8601), `level`, `logger` and `message`, then what is known of the
work the record belongs to: `task_uid`, `key` (a key's public half: nothing here ever takes the
private one), `model`, `worker`, `attempt`, `duration` (seconds), and `exception` (the traceback)
when there is one. Those fields come from `extra=` on the logging call or from the context that the
code around it set with `context()` / `bind()` (a contextvar: it follows the asyncio task, and
threads started with `asyncio.to_thread` or the worker's engine thread):

    with logs.context(task_uid=uid, model=spec.model_code, timed=True):
        log.info("task %s finished", uid)   # … "task_uid": uid, "model": …, "duration": 12.5

With `timed=True`, each record of the context carries the seconds since it began as `duration` (on a
task's last line, the task's duration), unless the call passes its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
import types
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "FORMATS", "TEXT_FORMAT", "JsonFormatter", "bind", "configure", "context"]

#: the output formats of `configure` (PICSERVE_LOG_FORMAT)
FORMATS = ("text", "json")
#: the line format of text logs
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the context fields a JSON line carries, in this order, when known
FIELDS = ("task_uid", "key", "model", "worker", "attempt", "action", "ret_code", "duration")

_STARTED = "_started"
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "picserve_log_context", default=types.MappingProxyType({})
)


@contextlib.contextmanager
def context(*, timed: bool = False, **fields: Any) -> Iterator[None]:
    """`fields` (names of FIELDS) on every record logged inside, on top of the context around it;
    with `timed`, records carry the seconds since now as `duration`."""
    _check(fields)
    added: dict[str, Any] = {**_CONTEXT.get(), **fields}
    if timed:
        added[_STARTED] = time.monotonic()
    token = _CONTEXT.set(added)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: Any) -> None:
    """Add `fields` to the current context until the current asyncio task ends (an API request's:
    each request runs in a task of its own)."""
    _check(fields)
    _CONTEXT.set({**_CONTEXT.get(), **fields})


def _check(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))} (known: {', '.join(FIELDS)})")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        known = _CONTEXT.get()
        for name in FIELDS:
            value = getattr(record, name, known.get(name))
            if value is not None:
                line[name] = value
        if "duration" not in line and _STARTED in known:
            line["duration"] = round(time.monotonic() - known[_STARTED], 3)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` ("info", "debug", …) in `log_format` (one of FORMATS). Like
    `logging.basicConfig`, a no-op when the root logger has handlers already."""
    if log_format not in FORMATS:
        raise ValueError(f"PICSERVE_LOG_FORMAT: must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])

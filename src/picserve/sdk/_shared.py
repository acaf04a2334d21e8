"""What `Client` and `AsyncClient` share: everything but the waiting on the network and the clock.

What a request body is (signed), what a reply means (a dict, a `PicserveError` of its RetCode, or a
`TransportError`), which requests are resent and after how long, what each polled TaskDetail decides
for `wait`, and what each action's reply is shaped into live here, once; each client's public method
is one line that does its I/O (blocking or awaited) and hands the rest to these.
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import httpx

from picserve import domain, errors
from picserve.protocol import signature
from picserve.sdk.types import TaskDetail

__all__ = [
    "BaseClient",
    "Watch",
    "backoff",
    "own_fields",
    "save",
    "task_details",
    "task_uid",
    "task_uids",
]

#: the HTTP client a PICPIK client sends with, and the transport that may replace its network
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)

#: the fields every reply carries, whatever its action
_ENVELOPE = ("Action", "RetCode", "Message", "request_uuid")


class BaseClient(abc.ABC, Generic[HttpT, TransportT]):
    """A PICPIK client's state and its decisions; subclasses add the I/O (`httpx.Client` or `AsyncClient`)."""

    def __init__(
        self,
        base_url: str,
        public_key: str,
        private_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        transport: TransportT | None = None,
        http: HttpT | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: resends of a request that failed in transit (see `call`)
        self.retries = retries
        # keys pasted from a terminal or a file often carry a space or a newline: never part of a key
        self.public_key = public_key.strip()
        self._private_key = private_key.strip()
        self._http: HttpT = http or self._open(timeout, transport)

    @abc.abstractmethod
    def _open(self, timeout: float, transport: TransportT | None) -> HttpT:
        """A new HTTP client on `base_url`, sending through `transport` (None: the network)."""

    def signed(self, action: str, request_uuid: str | None = None, **params: Any) -> dict[str, Any]:
        """The request body for `action` with `params` (None values left out), signed, under
        `request_uuid` (a new one by default)."""
        body = {
            "Action": action,
            "PublicKey": self.public_key,
            "request_uuid": request_uuid or str(uuid.uuid4()),
            **{k: v for k, v in params.items() if v is not None},
        }
        body["Signature"] = signature.sign(body, self._private_key)
        return body

    def _resend_delay(self, failure: errors.TransportError, attempt: int) -> float | None:
        """The seconds to wait before resending a request whose `attempt`-th send (0: the first) failed
        with `failure`; None: not resent (it got an HTTP answer, or the resends are spent)."""
        if attempt >= self.retries or not isinstance(failure.__cause__, httpx.TransportError):
            return None
        return backoff(attempt)

    def _failed(self, method: str, url: str, failure: httpx.HTTPError) -> errors.TransportError:
        """The TransportError of a request that got no HTTP answer (raise it `from failure`)."""
        hint = f" (is picserve serving at {self.base_url}?)" if isinstance(failure, httpx.ConnectError) else ""
        where = self._absolute(url)
        return errors.TransportError(f"{method} {where} failed: {type(failure).__name__}: {failure}{hint}")

    def _answered(self, method: str, url: str, response: httpx.Response) -> httpx.Response:
        """`response` if it is a 200; else raises its TransportError."""
        if response.status_code != 200:
            message = response.text[:200] if response.text else response.reason_phrase
            raise errors.TransportError(f"{method} {self._absolute(url)}: HTTP {response.status_code}: {message}")
        return response

    def _reply(self, response: httpx.Response) -> dict[str, Any]:
        """The PICPIK reply in `response`; raises the PicserveError its RetCode names, or a TransportError
        for an answer that is not a PICPIK reply."""
        try:
            reply = response.json()
        except ValueError:
            raise errors.TransportError(f"{self.base_url} answered with something other than JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("RetCode"), int):
            raise errors.TransportError(f"{self.base_url} answered without a RetCode: not a PICPIK endpoint?")
        if reply["RetCode"] != 0:
            raise errors.from_ret_code(reply["RetCode"], str(reply.get("Message", "")))
        return reply

    def _absolute(self, url: str) -> str:
        """`url` as requested: a path is relative to `base_url`."""
        return url if "://" in url else f"{self.base_url}/{url.lstrip('/')}"


def backoff(attempt: int) -> float:
    """The seconds before resending a request whose `attempt`-th send (0: the first) failed in transit:
    0.25 s, doubling, at most 4 s."""
    return min(0.25 * 2.0**attempt, 4.0)


class Watch:
    """`wait`'s decisions for one task: each TaskDetail polled ends the wait, or asks for another poll."""

    def __init__(self, task_uid: str, timeout: float, on_update: Callable[[TaskDetail], None] | None) -> None:
        self.task_uid = task_uid
        self.timeout = timeout
        self.on_update = on_update
        self._deadline = time.monotonic() + timeout

    def ended(self, details: list[TaskDetail]) -> TaskDetail | None:
        """The task's TaskDetail (from ListTasksDetails' `details`) once it has ended (Finished, Error or
        Canceled), else None: poll again. `on_update` gets it either way; past the deadline, a task still
        going raises WaitTimeout."""
        detail = details[0]
        if self.on_update is not None:
            self.on_update(detail)
        if domain.TaskStatus(detail["Status"]).is_terminal:
            return detail
        if time.monotonic() > self._deadline:
            raise errors.WaitTimeout(f"task {self.task_uid} still {detail['Status']} after {self.timeout:g} s")
        return None


def task_uid(reply: dict[str, Any]) -> str:
    """The TaskUID of a reply to an action that makes a task."""
    return str(reply["TaskUID"])


def task_details(reply: dict[str, Any]) -> list[TaskDetail]:
    """ListTasksDetails' TaskDetails, in the order asked."""
    return cast(list[TaskDetail], reply["TaskDetailList"])


def task_uids(reply: dict[str, Any]) -> list[str]:
    """ListRunningTasks' TaskUIDs."""
    return [str(uid) for uid in reply["TaskUIDList"]]


def own_fields(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without the envelope every reply carries (Action, RetCode, Message, request_uuid)."""
    return {k: v for k, v in reply.items() if k not in _ENVELOPE}


def save(path: Path | str, data: bytes) -> Path:
    """`data` written to `path` (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

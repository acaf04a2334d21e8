"""Client: one method per PICPIK action; every request signed; errors raised as picserve errors.

>>> client = Client("http://127.0.0.1:8080", public_key, private_key)        # doctest: +SKIP
>>> uid = client.generate_images_sdxl(MainModel={"ModelCode": "picserve-tiny"},
...                                   PositivePrompts=["a cat"], Width=512, Height=512)
>>> detail = client.wait(uid)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from picserve import domain, errors
from picserve.protocol import signature

__all__ = ["Client"]


class Client:
    def __init__(
        self,
        base_url: str,
        public_key: str,
        private_key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ):
        """`transport` or a whole `http` client (e.g. Starlette's TestClient) replace the network."""
        self.base_url = base_url.rstrip("/")
        self.public_key = public_key
        self._private_key = private_key
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        """Send one signed action; returns the reply, or raises the PicserveError its RetCode names."""
        body = {
            "Action": action,
            "PublicKey": self.public_key,
            "request_uuid": str(uuid.uuid4()),
            **{k: v for k, v in params.items() if v is not None},
        }
        body["Signature"] = signature.sign(body, self._private_key)
        response = self._http.post("/", json=body)
        response.raise_for_status()
        reply = response.json()
        if reply.get("RetCode", -1) != 0:
            raise errors.from_ret_code(reply.get("RetCode", -1), reply.get("Message", ""))
        return reply

    def generate_images_sdxl(self, **params: Any) -> str:
        return self.call("GenerateImagesSDXL", **params)["TaskUID"]

    def list_models(self) -> dict[str, Any]:
        return self.call("ListModels")

    def list_tasks_details(self, task_uids: Sequence[str]) -> list[dict[str, Any]]:
        return self.call("ListTasksDetails", TaskUIDList=list(task_uids))["TaskDetailList"]

    def list_running_tasks(self) -> list[str]:
        return self.call("ListRunningTasks")["TaskUIDList"]

    def get_credit_balance(self) -> dict[str, Any]:
        return self.call("GetCreditBalance")

    def cancel_task(self, task_uids: Sequence[str]) -> None:
        self.call("CancelTask", TaskUIDList=list(task_uids))

    def wait(self, task_uid: str, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
        """Poll until the task ends; returns its TaskDetail (Finished, Error or Canceled)."""
        deadline = time.monotonic() + timeout
        while True:
            detail = self.list_tasks_details([task_uid])[0]
            if domain.TaskStatus(detail["Status"]).is_terminal:
                return detail
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_uid} still {detail['Status']} after {timeout:g} s")
            time.sleep(poll)

    def download(self, url: str, path: Path) -> Path:
        response = self._http.get(url)
        response.raise_for_status()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        return path

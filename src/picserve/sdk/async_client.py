"""AsyncClient: `Client`'s twin for asyncio code, on `httpx.AsyncClient`: the same methods, awaited.

Everything but the waiting is Client's (sdk/_shared.py): the same signed bodies, the same resends of a
request lost in transit (same request_uuid, same backoff, slept with `asyncio.sleep`), the same
`PicserveError` classes, the same typed parameters and replies. `wait` polls without blocking the event
loop; its `on_update` is a plain function, called in the loop.

>>> async with AsyncClient("http://127.0.0.1:8080", public_key, private_key) as client:  # doctest: +SKIP
...     uid = await client.generate_images_sdxl(MainModel={"ModelCode": "picserve-tiny"},
...                                             PositivePrompts=["a cat"], Width=512, Height=512)
...     detail = await client.wait(uid, on_update=lambda detail: print(detail["Progress"]))
...     path = await client.download(detail["ImgList"][0], Path("cat.png"))

The image helpers (`image_data`, `task_image`, `control_unit`, `hires_fix`, `masked_edit`) make no
requests: import them from `picserve.sdk` and pass what they make to either client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack, cast

import httpx

from picserve import errors
from picserve.sdk import _shared
from picserve.sdk.client import Client
from picserve.sdk.types import (
    ApplyReferenceStyleParams,
    ControlNetsReply,
    CreditBalance,
    DescribeImagesParams,
    ExtractContentsParams,
    GenerateBackgroundsParams,
    GenerateImagesSDXLParams,
    ImportModelParams,
    ModelsReply,
    ModifyMaskedPixelsParams,
    RemoveBackgroundParams,
    RemoveBackgroundsInBatchParams,
    RemoveContentsParams,
    ResizeImageParams,
    RestoreFacesParams,
    TaskDetail,
)

__all__ = ["AsyncClient"]


class AsyncClient(_shared.BaseClient[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """A PICPIK client for `base_url`, signing with the key pair, for asyncio code.

    `transport` (an `httpx.AsyncBaseTransport`: e.g. `httpx.MockTransport`, or an `httpx.ASGITransport`
    around the app) or a whole `http` client (an `httpx.AsyncClient`) replace the network. Every method is
    `Client`'s, awaited, and documented there (its docstring is copied here); `aclose()` or `async with`
    closes the HTTP client.
    """

    def _open(self, timeout: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        """Close the HTTP client (`Client.close`'s twin)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        body = self.signed(action, **params)
        for attempt in range(self.retries + 1):
            try:
                response = await self._request("POST", "/", json=body)
                break
            except errors.TransportError as failure:
                delay = self._resend_delay(failure, attempt)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        return self._reply(response)

    async def generate_images_sdxl(self, **params: Unpack[GenerateImagesSDXLParams]) -> str:
        return _shared.task_uid(await self.call("GenerateImagesSDXL", **params))

    async def apply_reference_style(self, **params: Unpack[ApplyReferenceStyleParams]) -> str:
        return _shared.task_uid(await self.call("ApplyReferenceStyle", **params))

    async def modify_masked_pixels(self, **params: Unpack[ModifyMaskedPixelsParams]) -> str:
        return _shared.task_uid(await self.call("ModifyMaskedPixels", **params))

    async def remove_contents(self, **params: Unpack[RemoveContentsParams]) -> str:
        return _shared.task_uid(await self.call("RemoveContents", **params))

    async def resize_image(self, **params: Unpack[ResizeImageParams]) -> str:
        return _shared.task_uid(await self.call("ResizeImage", **params))

    async def remove_background(self, **params: Unpack[RemoveBackgroundParams]) -> str:
        return _shared.task_uid(await self.call("RemoveBackground", **params))

    async def remove_backgrounds_in_batch(self, **params: Unpack[RemoveBackgroundsInBatchParams]) -> str:
        return _shared.task_uid(await self.call("RemoveBackgroundsInBatch", **params))

    async def restore_faces(self, **params: Unpack[RestoreFacesParams]) -> str:
        return _shared.task_uid(await self.call("RestoreFaces", **params))

    async def extract_contents(self, **params: Unpack[ExtractContentsParams]) -> str:
        return _shared.task_uid(await self.call("ExtractContents", **params))

    async def describe_images(self, **params: Unpack[DescribeImagesParams]) -> str:
        return _shared.task_uid(await self.call("DescribeImages", **params))

    async def generate_backgrounds(self, **params: Unpack[GenerateBackgroundsParams]) -> str:
        return _shared.task_uid(await self.call("GenerateBackgrounds", **params))

    async def import_model(self, **params: Unpack[ImportModelParams]) -> str:
        return _shared.task_uid(await self.call("ImportModel", **params))

    async def list_models(self) -> ModelsReply:
        return cast(ModelsReply, _shared.own_fields(await self.call("ListModels")))

    async def list_controlnets(self) -> ControlNetsReply:
        return cast(ControlNetsReply, _shared.own_fields(await self.call("ListControlNets")))

    async def list_tasks_details(self, task_uids: Sequence[str]) -> list[TaskDetail]:
        return _shared.task_details(await self.call("ListTasksDetails", TaskUIDList=list(task_uids)))

    async def list_running_tasks(self) -> list[str]:
        return _shared.task_uids(await self.call("ListRunningTasks"))

    async def get_credit_balance(self) -> CreditBalance:
        return cast(CreditBalance, _shared.own_fields(await self.call("GetCreditBalance")))

    async def cancel_task(self, task_uids: Sequence[str]) -> None:
        await self.call("CancelTask", TaskUIDList=list(task_uids))

    async def wait(
        self,
        task_uid: str,
        # Client.wait's parameters: WaitTimeout names the status the task was still in, which
        # `asyncio.timeout` around the call could not
        timeout: float = 600.0,  # noqa: ASYNC109
        poll: float = 0.5,
        on_update: Callable[[TaskDetail], None] | None = None,
    ) -> TaskDetail:
        watch = _shared.Watch(task_uid, timeout, on_update)
        # polling a remote server: nothing here could set an asyncio.Event when the task ends
        while (detail := watch.ended(await self.list_tasks_details([task_uid]))) is None:  # noqa: ASYNC110
            await asyncio.sleep(poll)
        return detail

    async def fetch(self, url: str) -> bytes:
        return (await self._request("GET", url)).content

    async def download(self, url: str, path: Path) -> Path:
        # the file is written in a thread: a large image must not stall the event loop
        return await asyncio.to_thread(_shared.save, path, await self.fetch(url))

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._failed(method, url, exc) from exc
        return self._answered(method, url, response)


def _copy_docs(twin: type, original: type) -> None:
    """Give each method of `twin` that has no docstring the docstring of `original`'s method of its name
    (the twin's methods do what the original's do: one text, kept in one place)."""
    for name, method in vars(twin).items():
        source = getattr(original, name, None)
        if callable(method) and method.__doc__ is None and source is not None:
            method.__doc__ = source.__doc__


_copy_docs(AsyncClient, Client)

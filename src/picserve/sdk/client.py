"""Client: one method per PICPIK action; every request signed; every failure a `PicserveError`.

A refusal raises the class its RetCode names (`errors.ParamError` for 160, …); a server that cannot
be reached or does not answer as a PICPIK endpoint raises `errors.TransportError`; `wait` giving up
raises `errors.WaitTimeout`, which is also a `TimeoutError`. Callers catch `errors.PicserveError`.
`AsyncClient` (sdk/async_client.py) is its twin for asyncio code: the same methods, awaited.

>>> client = Client("http://127.0.0.1:8080", public_key, private_key)        # doctest: +SKIP
>>> uid = client.generate_images_sdxl(MainModel={"ModelCode": "picserve-tiny"},
...                                   PositivePrompts=["a cat"], Width=512, Height=512)
>>> detail = client.wait(uid)                                                 # doctest: +SKIP
>>> png = client.fetch(detail["ImgList"][0])                                  # doctest: +SKIP

The same with `AsyncClient`, inside a coroutine (the helpers below make no requests: both take them):

>>> async with AsyncClient("http://127.0.0.1:8080", public_key, private_key) as client:  # doctest: +SKIP
...     uid = await client.generate_images_sdxl(MainModel={"ModelCode": "picserve-tiny"},
...                                             PositivePrompts=["a cat"], Width=512, Height=512)
...     png = await client.fetch((await client.wait(uid))["ImgList"][0])

The image tools take a base64 image or, chained, a finished task's result of the same key:

>>> big = client.resize_image(Image=task_image(uid), Scale=2)                 # doctest: +SKIP
>>> cut = client.remove_background(RawImage=image_data("photo.jpg"))          # doctest: +SKIP

A hires fix (`hires_fix`) makes the image at a smaller first pass, then upscales and denoises it again:

>>> uid = client.generate_images_sdxl(MainModel={"ModelCode": "sdxl-base"},  # doctest: +SKIP
...     PositivePrompts=["a castle"], Width=2048, Height=1152, HiresFix=hires_fix(denoising_strength=0.5))

Inpainting and outpainting (`masked_edit` builds ModifyMaskedPixels' image fields), and the eraser:

>>> uid = client.modify_masked_pixels(MainModel={"ModelCode": "sdxl-base"},  # doctest: +SKIP
...     PositivePrompts=["a red scarf"], **masked_edit("photo.png", "mask.png", only_masked=True))
>>> uid = client.modify_masked_pixels(MainModel={"ModelCode": "sdxl-base"},  # doctest: +SKIP
...     PositivePrompts=["a beach"], **masked_edit(task_image(uid), outpaint=(256, 0, 256, 0)))
>>> uid = client.remove_contents(RawImage=image_data("photo.png"), Mask=image_data("mask.png"))  # doctest: +SKIP

ControlNet units (`control_unit`) name their images by index in ImageAndMaskList:

>>> uid = client.generate_images_sdxl(                                        # doctest: +SKIP
...     MainModel={"ModelCode": "sdxl-base"}, PositivePrompts=["a dancer"],
...     ImageAndMaskList=[image_data("pose.png")],
...     ControlNetList=[control_unit("xl-canny", 0, "canny", weight=0.8, CannyLowThreshold=50)])
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Required, Unpack, cast

import httpx
from typing_extensions import TypedDict

from picserve import errors
from picserve.sdk import _shared
from picserve.sdk.types import (
    ApplyReferenceStyleParams,
    ControlModel,
    ControlModeName,
    ControlNet,
    ControlNetsReply,
    ControlTypeName,
    CreditBalance,
    DescribeImagesParams,
    ExtractContentsParams,
    GenerateBackgroundsParams,
    GenerateImagesSDXLParams,
    HiresFix,
    Image2Image,
    ImportModelParams,
    InferenceParams,
    Masked,
    ModelsReply,
    ModifyMaskedPixelsParams,
    Outpaint,
    PreProcessor,
    PreProcessorParams,
    RemoveBackgroundParams,
    RemoveBackgroundsInBatchParams,
    RemoveContentsParams,
    ResizeImageParams,
    ResizeModeName,
    RestoreFacesParams,
    TaskDetail,
)

__all__ = [
    "Client",
    "MaskedEdit",
    "control_unit",
    "hires_fix",
    "image_data",
    "image_field",
    "image_type",
    "is_task_image",
    "masked_edit",
    "task_image",
]

#: ModifyMaskedPixels' ImageAndMaskList entries at most
MAX_MASKED_IMAGES = 3


class Client(_shared.BaseClient[httpx.Client, httpx.BaseTransport]):
    """A PICPIK client for `base_url`, signing with the key pair.

    `transport` (e.g. `httpx.MockTransport`, or an `httpx.ASGITransport` around the app) or a whole
    `http` client (e.g. Starlette's TestClient) replace the network.
    """

    def _open(self, timeout: float, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        """Send one signed action; returns the reply, or raises the PicserveError its RetCode names.

        A request that fails in transit (connection refused or reset, timeout) is resent as it was,
        same request_uuid and all, up to `retries` times: a resent GenerateImagesSDXL gets the TaskUID
        of the one the server may already have accepted, so a retry never makes a second task.
        """
        body = self.signed(action, **params)
        for attempt in range(self.retries + 1):
            try:
                response = self._request("POST", "/", json=body)
                break
            except errors.TransportError as failure:
                delay = self._resend_delay(failure, attempt)
                if delay is None:
                    raise
                time.sleep(delay)
        return self._reply(response)

    def generate_images_sdxl(self, **params: Unpack[GenerateImagesSDXLParams]) -> str:
        return _shared.task_uid(self.call("GenerateImagesSDXL", **params))

    def apply_reference_style(self, **params: Unpack[ApplyReferenceStyleParams]) -> str:
        """ApplyReferenceStyle: a generation task redrawing a raw image in a style image's style."""
        return _shared.task_uid(self.call("ApplyReferenceStyle", **params))

    def modify_masked_pixels(self, **params: Unpack[ModifyMaskedPixelsParams]) -> str:
        """ModifyMaskedPixels: a generation task repainting the masked region of an image (inpainting) or
        (Outpaint) the margins it grows by (outpainting); `masked_edit` builds the image fields."""
        return _shared.task_uid(self.call("ModifyMaskedPixels", **params))

    def remove_contents(self, **params: Unpack[RemoveContentsParams]) -> str:
        """RemoveContents: a task whose one result is `RawImage` with what `Mask` covers erased (an eraser
        of models/inpaint, or an SDXL inpainting pass with MainModel or when no eraser is installed)."""
        return _shared.task_uid(self.call("RemoveContents", **params))

    def resize_image(self, **params: Unpack[ResizeImageParams]) -> str:
        """ResizeImage: a task whose one result is `Image` at Width×Height (or its size × Scale)."""
        return _shared.task_uid(self.call("ResizeImage", **params))

    def remove_background(self, **params: Unpack[RemoveBackgroundParams]) -> str:
        """RemoveBackground: a task whose one result is the RGBA cut-out of `RawImage` (or its mask)."""
        return _shared.task_uid(self.call("RemoveBackground", **params))

    def remove_backgrounds_in_batch(self, **params: Unpack[RemoveBackgroundsInBatchParams]) -> str:
        """RemoveBackgroundsInBatch: one task, one result per image of `RawImages`, in order."""
        return _shared.task_uid(self.call("RemoveBackgroundsInBatch", **params))

    def restore_faces(self, **params: Unpack[RestoreFacesParams]) -> str:
        """RestoreFaces: a task whose one result is `RawImage` with every face restored (RestoreStrength)."""
        return _shared.task_uid(self.call("RestoreFaces", **params))

    def extract_contents(self, **params: Unpack[ExtractContentsParams]) -> str:
        """ExtractContents: a task whose one result is the object under `IncludePointList`, cut out (or
        its mask)."""
        return _shared.task_uid(self.call("ExtractContents", **params))

    def describe_images(self, **params: Unpack[DescribeImagesParams]) -> str:
        """DescribeImages: a task whose TxtList holds one text per image of `ImageList`, in order."""
        return _shared.task_uid(self.call("DescribeImages", **params))

    def generate_backgrounds(self, **params: Unpack[GenerateBackgroundsParams]) -> str:
        """GenerateBackgrounds: a task painting a background around `TransparentForeground`."""
        return _shared.task_uid(self.call("GenerateBackgrounds", **params))

    def import_model(self, **params: Unpack[ImportModelParams]) -> str:
        """ImportModel (admin keys only): a task downloading `Url` into the server's models folder; once
        Finished, its TxtList says what was filed and ListModels lists it."""
        return _shared.task_uid(self.call("ImportModel", **params))

    def list_models(self) -> ModelsReply:
        return cast(ModelsReply, _shared.own_fields(self.call("ListModels")))

    def list_controlnets(self) -> ControlNetsReply:
        """ListControlNets: the preprocessors the server can run now and the control models installed,
        each by ModelCode with its default InferenceParams (`control_unit` takes either kind of entry)."""
        return cast(ControlNetsReply, _shared.own_fields(self.call("ListControlNets")))

    def list_tasks_details(self, task_uids: Sequence[str]) -> list[TaskDetail]:
        return _shared.task_details(self.call("ListTasksDetails", TaskUIDList=list(task_uids)))

    def list_running_tasks(self) -> list[str]:
        return _shared.task_uids(self.call("ListRunningTasks"))

    def get_credit_balance(self) -> CreditBalance:
        return cast(CreditBalance, _shared.own_fields(self.call("GetCreditBalance")))

    def cancel_task(self, task_uids: Sequence[str]) -> None:
        self.call("CancelTask", TaskUIDList=list(task_uids))

    def wait(
        self,
        task_uid: str,
        timeout: float = 600.0,
        poll: float = 0.5,
        on_update: Callable[[TaskDetail], None] | None = None,
    ) -> TaskDetail:
        """Poll until the task ends; returns its TaskDetail (Finished, Error or Canceled). `on_update`
        gets every TaskDetail polled (queue position, progress, preview), the last one included."""
        watch = _shared.Watch(task_uid, timeout, on_update)
        while (detail := watch.ended(self.list_tasks_details([task_uid]))) is None:
            time.sleep(poll)
        return detail

    def fetch(self, url: str) -> bytes:
        """The bytes of a result URL (from `ImgList`)."""
        return self._request("GET", url).content

    def download(self, url: str, path: Path) -> Path:
        """Save a result URL to `path` (folders made as needed); returns the path."""
        return _shared.save(path, self.fetch(url))

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._failed(method, url, exc) from exc
        return self._answered(method, url, response)


#: the image formats the server takes, by their first bytes (as `reference_images` reads them)
_MEDIA_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)
#: `task:<TaskUID>/<index>`, as the server reads it (chaining.py)
_TASK_IMAGE = re.compile(r"task:[0-9A-Za-z_-]{1,64}/[0-9]{1,6}")


def image_type(data: bytes) -> str | None:
    """`image/png`, `image/jpeg` or `image/webp` from the bytes' magic numbers; None for anything else."""
    for magic, media_type in _MEDIA_TYPES:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data(source: bytes | str | Path) -> str:
    """An image field's value: a file (its path) or its bytes as a `data:image/...;base64,` URI.

    The format is read from the bytes (PNG, JPEG or WebP, what the server takes), not from a file name;
    anything else raises ValueError, a file that cannot be read OSError.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    media_type = image_type(data)
    if media_type is None:
        what = "the bytes" if isinstance(source, bytes) else str(source)
        kind = "empty" if not data else "not a PNG, JPEG or WebP image"
        raise ValueError(f"{what}: {kind} (the server takes PNG, JPEG or WebP)")
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def task_image(task_uid: str, index: int = 0) -> str:
    """An image field's value naming the `index`-th result (0-based) of a finished task of the same key:
    `task:<TaskUID>/<index>` (chaining, a picserve extension: nothing is downloaded or uploaded)."""
    reference = f"task:{task_uid.strip()}/{index}"
    if isinstance(index, bool) or not isinstance(index, int) or index < 0 or not _TASK_IMAGE.fullmatch(reference):
        raise ValueError(f"task_image({task_uid!r}, {index!r}): expected a TaskUID and an index >= 0")
    return reference


def is_task_image(value: str) -> bool:
    """Whether `value` is a `task:<TaskUID>/<index>` reference (as `task_image` makes)."""
    return _TASK_IMAGE.fullmatch(value) is not None


def control_unit(
    model: str | Mapping[str, Any],
    image_index: int,
    preprocessor: str | Mapping[str, Any] | None = None,
    *,
    mask_index: int | None = None,
    invert_mask: bool = False,
    weight: float | None = None,
    start: float | None = None,
    end: float | None = None,
    mode: ControlModeName | None = None,
    resize_mode: ResizeModeName | None = None,
    control_type: ControlTypeName | None = None,
    **preprocessor_params: Unpack[PreProcessorParams],
) -> ControlNet:
    """One unit of ControlNetList: control model `model` (a ModelCode, or an entry of `list_controlnets()`'s
    ControlModels) guided by the ImageAndMaskList entry `image_index`, made into a control map by
    `preprocessor` (a ModelCode or a PreProcessors entry; None: the image already is the map).

    What is left out is not sent, so the server's defaults apply: the model's sidecar `InferenceParams`,
    else PICPIK's (weight 1, steps 0 to 1, Balanced, ResizeAndFill), and the preprocessor's own.
    `mask_index`: a mask entry (white: where the unit acts; `invert_mask` swaps it). `weight` 0..2, `start`
    and `end` 0..1 (the fraction of the steps it acts in), `mode` as A1111's control modes, `control_type` a
    ControlNet-Union's type (else its preprocessor's). `preprocessor_params` are the preprocessor's
    InferenceParams by their wire names (`CannyLowThreshold=50`, `Resolution=768`, A1111's other sliders
    such as `XDoGThreshold=20`; each left out: the preprocessor's default). The server checks
    the values and names the field it refuses; this raises ValueError only for a unit that cannot be one.
    """
    for name, index in (("image_index", image_index), ("mask_index", mask_index)):
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise ValueError(f"control_unit: {name} must be an ImageAndMaskList index >= 0, got {index!r}")
    if mask_index is not None and mask_index == image_index:
        raise ValueError(f"control_unit: mask_index {mask_index} is image_index: the mask is another entry")
    unknown = sorted(set(preprocessor_params) - set(PreProcessorParams.__annotations__))
    if unknown:
        raise TypeError(f"control_unit: unknown preprocessor parameter {unknown[0]!r}")
    if preprocessor_params and preprocessor is None:
        raise ValueError(
            f"control_unit: {', '.join(preprocessor_params)} set a preprocessor's parameters: name the preprocessor"
        )
    options = {
        "ControlWeight": weight,
        "StartingStep": start,
        "EndingStep": end,
        "ControlMode": mode,
        "ResizeMode": resize_mode,
        "ControlType": control_type,
    }
    control: ControlModel = {"ModelCode": _model_code(model, "model")}
    given = {name: value for name, value in options.items() if value is not None}
    if given:
        control["InferenceParams"] = cast(InferenceParams, given)
    fields: dict[str, Any] = {"ImageIndex": image_index}  # in the wire's order
    if mask_index is not None:
        fields["MaskIndex"] = mask_index
    if invert_mask:
        fields["InvertMask"] = True
    if preprocessor is not None:
        pre: PreProcessor = {"ModelCode": _model_code(preprocessor, "preprocessor")}
        if preprocessor_params:
            pre["InferenceParams"] = cast(InferenceParams, dict(preprocessor_params))
        fields["PreProcessor"] = pre
    fields["ControlModel"] = control
    return cast(ControlNet, fields)


def _model_code(value: str | Mapping[str, Any], what: str) -> str:
    """A ModelCode, given as itself or as a ListControlNets entry (only its ModelCode is sent: an entry's
    other fields are the server's own defaults and extensions)."""
    code = value.get("ModelCode") if isinstance(value, Mapping) else value
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"control_unit: {what} must be a ModelCode or a ListControlNets entry, got {value!r}")
    return code.strip()


def image_field(source: bytes | str | Path | Any) -> str:
    """An image field's value from what a caller has: a `task:<TaskUID>/<index>` reference or a `data:` URI
    (as they are), a file's path, its bytes, or a PIL image (sent as PNG)."""
    if isinstance(source, str) and (source.startswith("data:") or is_task_image(source)):
        return source
    if isinstance(source, str | bytes | Path):
        return image_data(source)
    if hasattr(source, "save") and hasattr(source, "size"):  # a PIL image (PIL is not imported for this)
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return image_data(buffer.getvalue())
    raise TypeError(f"an image: a path, bytes, a PIL image, a data URI or task:TASKUID/INDEX, got {type(source)}")


def hires_fix(
    upscaler: str | None = None,
    steps: int | None = None,
    denoising_strength: float | None = None,
    first_pass: tuple[int, int] | None = None,
    *,
    first_pass_width: int | None = None,
    first_pass_height: int | None = None,
) -> HiresFix:
    """GenerateImagesSDXL's `HiresFix` (picserve extension, A1111's hires fix): the image is made at a first
    pass, upscaled to Width×Height by `upscaler` ("Latent", the default; "Lanczos"; or a ModelCode of
    ListModels' UpscaleModels) and denoised again there for `steps` (0 or None: the first pass's Steps) at
    `denoising_strength` (0..1, default 0.7). `first_pass` (width, height), or one side of it (the other by
    Width×Height's aspect ratio); left out: Width×Height's aspect ratio at 1024² px, or half of it when that
    is no larger. What is left out is not sent (the server's defaults apply). Text-to-image only."""
    if first_pass is not None:
        if first_pass_width is not None or first_pass_height is not None:
            raise ValueError("hires_fix: give first_pass=(width, height) or first_pass_width/height, not both")
        if len(first_pass) != 2:
            raise ValueError(f"hires_fix: first_pass is (width, height), got {first_pass!r}")
        first_pass_width, first_pass_height = first_pass
    fields = {
        "Upscaler": upscaler,
        "Steps": steps,
        "DenoisingStrength": denoising_strength,
        "FirstPassWidth": first_pass_width,
        "FirstPassHeight": first_pass_height,
    }
    return cast(HiresFix, {name: value for name, value in fields.items() if value is not None})


class MaskedEdit(TypedDict, total=False):
    """ModifyMaskedPixels' image fields, as `masked_edit` builds them (splat into `modify_masked_pixels`)."""

    ImageAndMaskList: Required[list[str]]
    Masked: Required[Masked]
    Image2Image: Image2Image
    Outpaint: Outpaint


def masked_edit(
    image: bytes | str | Path | Any,
    mask: bytes | str | Path | Any | None = None,
    *,
    invert_mask: bool = False,
    mask_blur: int | None = None,
    only_masked: bool = False,
    padding: int | None = None,
    resolution: int | None = None,
    outpaint: tuple[int, int, int, int] | None = None,
    strength: float | None = None,
    extra_image: bytes | str | Path | Any | None = None,
) -> MaskedEdit:
    """ModifyMaskedPixels' `ImageAndMaskList`, `Masked`, `Image2Image` and `Outpaint` for `image` and its
    `mask` (white = repaint; the image's size). Images as `image_field` takes them (a path, bytes, a PIL
    image, a data URI or `task:<TaskUID>/<index>`).

    `only_masked`: A1111's "inpaint area: only masked": the mask's box plus `padding` px (0..256, 32) is
    generated at about `resolution`² px (64..2048, 1024) and pasted back. `outpaint`: (left, top, right,
    bottom) px the canvas grows by (the mask may then be left out: only the margins are painted).
    `strength`: how much of the masked region is redrawn (0..1; default 1: all of it). `extra_image`: an
    image whose content starts the masked region (needs no `strength`; its default then is the server's).
    What is left out is not sent.
    """
    if mask is None and not (outpaint and any(outpaint)):
        raise ValueError("masked_edit: give a mask (white = repaint), or outpaint margins to paint")
    if outpaint is not None and (len(outpaint) != 4 or any(side < 0 for side in outpaint)):
        raise ValueError(f"masked_edit: outpaint is (left, top, right, bottom) px >= 0, got {outpaint!r}")
    if not only_masked and (padding is not None or resolution is not None):
        raise ValueError("masked_edit: padding and resolution are only_masked's: set only_masked=True")
    images = [image_field(image)]
    masked: dict[str, Any] = {"ImageIndex": 0}
    if mask is not None:
        images.append(image_field(mask))
        masked["MaskIndex"] = 1
    if invert_mask:
        masked["InvertMask"] = True
    if mask_blur is not None:
        masked["MaskBlur"] = mask_blur
    if only_masked:
        masked["InpaintArea"] = "OnlyMasked"
        if padding is not None:
            masked["OnlyMaskedPadding"] = padding
        if resolution is not None:
            masked["OnlyMaskedResolution"] = resolution
    fields: dict[str, Any] = {"ImageAndMaskList": images, "Masked": masked}
    if extra_image is not None:
        images.append(image_field(extra_image))
        fields["Image2Image"] = {"ImageIndex": len(images) - 1}
    elif strength is not None:
        fields["Image2Image"] = {"ImageIndex": 0}
    if strength is not None:
        fields["Image2Image"]["ReferStrength"] = strength
    if outpaint is not None and any(outpaint):
        fields["Outpaint"] = dict(zip(("Left", "Top", "Right", "Bottom"), outpaint, strict=True))
    return cast(MaskedEdit, fields)

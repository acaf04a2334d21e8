"""The OpenAI-compatible image endpoint: `/v1/images/generations`, `/v1/images/edits`, `/v1/models`.

Tools that speak OpenAI's images API use picserve unchanged. Nothing here is a second generation
path: each request is rewritten as the `GenerateImagesSDXL` params it means (an edit of a small masked
region of a large image: the `ModifyMaskedPixels` params, only-masked), then goes exactly where a
PICPIK request goes (`submission.submit`: idempotency, validation, model defaults, the memory admission
check, the key's default webhook, credits and limits, the queue), so every rule is the PICPIK
endpoint's. An `Idempotency-Key` header (OpenAI's and Stripe's convention) makes a resend of the same
request within PICSERVE_IDEMPOTENCY_WINDOW return the first request's task. The request then waits for
its task (polling the repository, at most `Settings.openai_wait_timeout` seconds) and answers as
OpenAI does: `{"created": …, "data": [{"url": …} | {"b64_json": …}, …]}`.

    Authorization: Bearer <PublicKey>.<PrivateKey>
     │ auth.authenticate_key         unknown/revoked/expired key, wrong private key → 401; rate → 429
     │ _generation / _edit           OpenAI fields → GenerateImagesSDXL params (size → Width/Height,
     │                               n → BatchSize, an alpha mask → a white-=-repaint mask, …), or
     │                               ModifyMaskedPixels' (`_only_masked_helps`)
     │ submission.submit             the PICPIK path; field names in refusals mapped back (`_openai_param`)
     │ _wait                         poll until Finished (→ 200) or Error/Canceled (→ 500/503)
     ◄ {"created", "data"}  or  {"error": {"message", "type", "param", "code"}}

This module is the one place where an exception becomes an OpenAI error object and HTTP status, as
`api/endpoint.py` is for RetCodes; no reply carries a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image

from picserve import domain, errors, reference_images, submission
from picserve.api import auth, idempotency, requestlog
from picserve.protocol import envelope as envelope_module
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import generation

__all__ = ["IGNORED", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

#: OpenAI parameters accepted and ignored: they choose among OpenAI's own models' options
IGNORED = frozenset(
    {
        "background",
        "complexity",
        "input_fidelity",
        "moderation",
        "output_compression",
        "partial_images",
        "quality",
        "safety_identifier",
        "style",
        "user",
    }
)
#: what /v1/images/generations reads: OpenAI's fields, then picserve's extensions
_GENERATION_FIELDS = frozenset(
    {"model", "prompt", "n", "size", "response_format", "output_format", "stream"}
    | {"negative_prompt", "seed", "steps", "cfg_scale", "sampler"}
    | IGNORED
)
#: /v1/images/edits adds the image, its mask and the denoising strength (an extension)
_EDIT_FIELDS = _GENERATION_FIELDS | {"image", "image[]", "mask", "strength"}
#: the edits fields that are numbers (a multipart form sends every field as text)
_INTS = ("n", "seed", "steps")
_FLOATS = ("cfg_scale", "strength")

#: ReferStrength of an edit: a masked area is generated afresh (OpenAI's inpainting); an edit without a
#: mask keeps the image's composition (A1111's img2img default)
_MASKED_STRENGTH = 1.0
_UNMASKED_STRENGTH = 0.75

#: GenerateImagesSDXL field paths (as messages and to_spec name them) → the OpenAI parameter, first match wins
_PICPIK_TO_OPENAI = (
    ("MainModel.InferenceParams.Steps", "steps"),
    ("MainModel.InferenceParams.CFGScale", "cfg_scale"),
    ("MainModel.InferenceParams.Sampler", "sampler"),
    ("MainModel.ModelCode", "model"),
    ("MainModel", "model"),
    ("PositivePrompts", "prompt"),
    ("NegativePrompts", "negative_prompt"),
    ("Width", "size"),
    ("Height", "size"),
    ("BatchSize", "n"),
    ("Seed", "seed"),
    ("ImageAndMaskList[1]", "mask"),
    ("ImageAndMaskList", "image"),
    ("Image2Image.ReferStrength", "strength"),
    ("Image2Image", "image"),
)
_OPENAI_NAMES = _EDIT_FIELDS

_SIZE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
_INT = re.compile(r"-?[0-9]{1,12}")
_FLOAT = re.compile(r"-?[0-9]{1,6}(\.[0-9]{1,12})?")
#: what an images request is, to the rest of picserve
_ACTION = "GenerateImagesSDXL"
#: the longest wait between two polls of a waiting task
_POLL_MAX = 0.5


@dataclass(frozen=True)
class _Images:
    """An images request, rewritten: the PICPIK Action and params, and how to return the images."""

    params: dict[str, Any]
    response_format: str
    #: GenerateImagesSDXL, or ModifyMaskedPixels (an edit whose mask is small in a large image)
    action: str = _ACTION


class _Refusal(Exception):
    """A reply of this module's own, not a picserve error: a field OpenAI's API does not have either, a
    timeout, a client that left. It becomes the error object as it is."""

    def __init__(
        self, status: int, message: str, kind: str, code: str, param: str | None = None, retry: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: OpenAI's error `type` and `code`, the field it is about, whether the client may retry by itself
        self.kind = kind
        self.code = code
        self.param = param
        self.retry = retry


# --- routes --------------------------------------------------------------------------------------


@router.post("/images/generations")
async def generations(request: Request) -> JSONResponse:
    """OpenAI's image generation (JSON body)."""
    return await _reply(request, lambda services, account: _images(services, account, request, edit=False))


@router.post("/images/edits")
async def edits(request: Request) -> JSONResponse:
    """OpenAI's image edit (multipart form): img2img, or inpainting with a mask."""
    return await _reply(request, lambda services, account: _images(services, account, request, edit=True))


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    """The main models, as OpenAI lists models."""

    async def listing(services: Services, account: domain.Account) -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(_model_list, services)}

    return await _reply(request, listing)


@router.get("/models/{model}")
async def model(model: str, request: Request) -> JSONResponse:
    """One main model, as OpenAI describes a model."""

    async def one(services: Services, account: domain.Account) -> dict[str, Any]:
        found = [m for m in await asyncio.to_thread(_model_list, services) if m["id"] == model]
        if not found:
            raise errors.ModelNotFound(f"model {messages.shown(model)} is not on this server (see GET /v1/models)")
        return found[0]

    return await _reply(request, one)


# --- the one mapping point: authenticate, run, answer or turn the exception into an error object ----


async def _reply(
    request: Request, run: Callable[[Services, domain.Account], Awaitable[dict[str, Any]]]
) -> JSONResponse:
    route = f"{request.method} {request.url.path}"
    public_key: str | None = None
    private_key: str | None = None
    try:
        services: Services = request.app.state.services
        public_key, private_key = _bearer(request.headers.get("authorization"))
        account = await auth.authenticate_key(
            services.repo, public_key, private_key, services.settings.max_requests_per_minute
        )
        reply = await run(services, account)
        requestlog.accepted(route, public_key)
        return JSONResponse(reply)
    except _Refusal as refusal:
        requestlog.refused_http(route, public_key, refusal.status, refusal.message, (private_key,))
        return _error(refusal.status, refusal.message, refusal.kind, refusal.param, refusal.code, refusal.retry)
    except errors.PicserveError as exc:
        requestlog.refused(route, public_key, exc, (private_key,))
        return _error_of(exc)
    except Exception:  # a bug of ours: logged with its traceback, answered without it
        log.exception("unhandled error in %s", request.url.path)
        return _error(500, "internal server error", "server_error", None, None, retry=False)


def _bearer(header: str | None) -> tuple[str, str]:
    """`Bearer <PublicKey>.<PrivateKey>` → the two keys; AuthError says what was expected."""
    expected = "send Authorization: Bearer <PublicKey>.<PrivateKey> (your picserve key pair, joined by a dot)"
    if not header:
        raise errors.AuthError(f"You didn't provide an API key: {expected}")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.AuthError(f"the Authorization header is not a bearer token: {expected}")
    public_key, dot, private_key = token.strip().rpartition(".")
    if not dot or not public_key or not private_key:
        raise errors.AuthError(f"the API key is not <PublicKey>.<PrivateKey>: {expected}")
    if len(public_key) > envelope_module.MAX_KEY_CHARS or not public_key.isascii() or not public_key.isprintable():
        raise errors.UnknownKey("the PublicKey in the API key is unknown or revoked")
    return public_key, private_key


def _error_of(exc: errors.PicserveError) -> JSONResponse:
    """A picserve error as OpenAI's error object, with the HTTP status OpenAI gives that kind of error."""
    if isinstance(exc, errors.AuthError):
        return _error(401, exc.message, "invalid_request_error", None, "invalid_api_key")
    if isinstance(exc, errors.InsufficientCredits):  # OpenAI's "quota" is 429, not worth retrying
        return _error(429, exc.message, "insufficient_quota", None, "insufficient_quota", retry=False)
    if isinstance(exc, errors.RateLimited):
        return _error(429, exc.message, "requests", None, "rate_limit_exceeded")
    if isinstance(exc, errors.TooManyOpenTasks):
        return _error(429, exc.message, "requests", None, "too_many_open_tasks")
    if isinstance(exc, errors.ClientError):
        param, message = _openai_param(exc.message)
        if isinstance(exc, errors.ModelNotFound):
            return _error(404, message, "invalid_request_error", param or "model", "model_not_found")
        code = "model_not_compatible" if isinstance(exc, errors.IncompatibleModel) else "invalid_value"
        return _error(400, message, "invalid_request_error", param, code)
    if isinstance(exc, errors.ServerBusy):
        return _error(503, exc.message, "server_error", None, "server_busy")
    # a task that ran and failed: a retry would be a new task, so the client is told not to retry by itself
    if isinstance(exc, (errors.OutOfMemory, errors.StorageError)):
        return _error(503, exc.message, "server_error", None, _code_of(exc), retry=False)
    return _error(500, exc.message, "server_error", None, _code_of(exc), retry=False)


def _code_of(exc: errors.PicserveError) -> str:
    """`OutOfMemory` → `out_of_memory`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _error(
    status: int, message: str, kind: str, param: str | None, code: str | None, retry: bool = True
) -> JSONResponse:
    # the openai client retries 429 and 5xx by itself unless `x-should-retry: false` says otherwise
    headers = {} if retry else {"x-should-retry": "false"}
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _openai_param(message: str) -> tuple[str | None, str]:
    """The OpenAI parameter a refusal is about, and its message led by that name.

    `Width: must be between 64 and 2560 (got 5000)` → (`size`, `size: Width must be between 64 and
    2560 (got 5000)`); `MainModel.ModelCode 'x' is not on this server` → (`model`, `model 'x' is not …`);
    refusals made here already lead with the OpenAI name and are kept as they are.
    """
    head = re.match(r"[\w.\[\]]+", message)
    if head is None:
        return None, message
    path = head.group(0)
    if path in _OPENAI_NAMES:
        return path, message
    for picpik, name in _PICPIK_TO_OPENAI:
        if path == picpik or path.startswith((picpik + ".", picpik + "[")):
            rest = message[len(path) :]
            if path == picpik and rest.startswith(" "):
                return name, name + rest
            return name, f"{name}: {path}{rest.replace(': ', ' ', 1)}"
    return None, message


# --- the images requests --------------------------------------------------------------------------


async def _images(services: Services, account: domain.Account, request: Request, edit: bool) -> dict[str, Any]:
    raw = await _read_body(request, services.settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")
    if edit:
        fields = await asyncio.to_thread(_form_fields, raw, content_type)
        images = await asyncio.to_thread(_edit, fields, services)
    else:
        media_type = content_type.partition(";")[0].strip().lower()
        if media_type not in ("", "application/json"):
            raise errors.ParamError(f"Content-Type: must be application/json, got {messages.shown(content_type)}")
        body = (
            envelope_module.decode(raw)
            if len(raw) < 1024 * 1024
            else await asyncio.to_thread(envelope_module.decode, raw)
        )
        if not isinstance(body, dict):
            raise errors.ParamError(f"the request body must be a JSON object, got {envelope_module.describe(body)}")
        images = await asyncio.to_thread(_generation, body, services)
    # From here on, exactly the path of a PICPIK request (submission.py).
    key = request.headers.get("idempotency-key")
    window = services.settings.idempotency_window
    repeat_id = idempotency.for_key(key, request.url.path, images.params, window) if key is not None else None
    task_uid = await submission.submit(services, account, images.action, images.params, repeat_id)
    task = await _wait(services, account, task_uid, request)
    if task.status is not domain.TaskStatus.FINISHED:
        raise errors.from_ret_code(task.error_code or 500, task.error_message or f"task {task_uid} {task.status}")
    return await _answer(services, task, images.response_format, str(request.base_url))


def _generation(body: dict[str, Any], services: Services) -> _Images:
    """A /v1/images/generations JSON body → GenerateImagesSDXL params (types are left to messages.parse)."""
    fields = _known(body, _GENERATION_FIELDS)
    params = _common(fields, services)
    size = _size(fields.get("size"))
    if size is not None:
        params["Width"], params["Height"] = size
    return _Images(params, _response_format(fields))


def _edit(fields: dict[str, Any], services: Services) -> _Images:
    """A /v1/images/edits form → GenerateImagesSDXL params with the image, and the mask PICPIK's way."""
    fields = _known(fields, _EDIT_FIELDS)
    for name in _INTS:
        if name in fields:
            fields[name] = _number(name, fields[name], _INT, int)
    for name in _FLOATS:
        if name in fields:
            fields[name] = _number(name, fields[name], _FLOAT, float)
    params = _common(fields, services)
    image_bytes = fields.get("image", fields.get("image[]"))
    if image_bytes is None:
        raise errors.ParamError("image: missing required field (the image to edit, a PNG, JPEG or WebP file)")
    image_b64 = base64.b64encode(image_bytes).decode("ascii")
    image = reference_images.decode(image_b64, "image")
    if fields.get("mask") is not None:
        mask = reference_images.decode(base64.b64encode(fields["mask"]).decode("ascii"), "mask")
        if mask.mode not in ("RGBA", "LA"):
            raise errors.ParamError(
                "mask: must be a PNG with an alpha channel; its fully transparent pixels mark where to edit "
                f"(got a {mask.mode} image without transparency)"
            )
        repaint: Image.Image | None = _repaint_mask(mask)
    else:  # OpenAI's rule: without a mask, the image's own transparent pixels are the area to edit
        repaint = _repaint_mask(image) if image.mode in ("RGBA", "LA") else None
        if repaint is not None and repaint.getextrema() == (0, 0):
            repaint = None  # an alpha channel with no transparency: no area, the whole image is edited
    size = _size(fields.get("size"))
    strength = fields.get("strength", _UNMASKED_STRENGTH if repaint is None else _MASKED_STRENGTH)
    if repaint is not None and size in (None, image.size) and _only_masked_helps(repaint):
        # a small region of a large image: generated alone at the model's resolution and pasted back
        params["ImageAndMaskList"] = [image_b64, reference_images.png_base64(repaint)]
        params["Masked"] = {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 4, "InpaintArea": "OnlyMasked"}
        params["Image2Image"] = {"ImageIndex": 0, "ReferStrength": strength}
        return _Images(params, _response_format(fields), "ModifyMaskedPixels")
    params["Width"], params["Height"] = size if size is not None else image.size
    params["ImageAndMaskList"] = [image_b64] if repaint is None else [image_b64, reference_images.png_base64(repaint)]
    params["Image2Image"] = {"ImageIndex": 0, "ReferStrength": strength}
    return _Images(params, _response_format(fields))


def _only_masked_helps(mask: Image.Image) -> bool:
    """Whether an edit is better made only-masked (A1111's "inpaint area: only masked"): an image larger
    than SDXL's native area whose mask, padded as the edit pads it, covers at most a quarter of it, so
    the region gets more of the model's resolution than the whole image would give it."""
    box = mask.getbbox()
    if box is None or mask.width * mask.height <= generation.NATIVE_AREA:
        return False
    pad = 32 + 3 * 4  # OnlyMaskedPadding's default, and MaskBlur 4's reach
    width = min(mask.width, box[2] + pad) - max(0, box[0] - pad)
    height = min(mask.height, box[3] + pad) - max(0, box[1] - pad)
    return width * height * 4 <= mask.width * mask.height


def _known(fields: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The fields given (a null is not given), any unknown one refused by name, as OpenAI does."""
    for name in fields:
        if name not in known:
            raise _Refusal(
                400,
                f"{name}: unrecognized request argument supplied (picserve reads "
                f"{', '.join(sorted(known - IGNORED))}; it ignores {', '.join(sorted(IGNORED))})",
                "invalid_request_error",
                "unknown_parameter",
                param=name,
                retry=True,
            )
    if fields.get("stream") not in (None, False, "false"):
        raise errors.ParamError("stream: streaming is not supported here; leave stream false")
    if fields.get("output_format") not in (None, "png"):
        raise errors.ParamError(
            f"output_format: picserve makes PNG images only (got {messages.shown(fields['output_format'])})"
        )
    return {name: value for name, value in fields.items() if value is not None and name not in IGNORED}


def _common(fields: dict[str, Any], services: Services) -> dict[str, Any]:
    """What generations and edits share: the model, the prompts, n, the seed and inference params."""
    if "prompt" not in fields:
        raise errors.ParamError("prompt: missing required field")
    if not isinstance(fields["prompt"], str):
        raise errors.ParamError(f"prompt: must be a string, got {envelope_module.describe(fields['prompt'])}")
    params: dict[str, Any] = {"MainModel": {"ModelCode": fields.get("model") or _only_model(services)}}
    params["PositivePrompts"] = [fields["prompt"]]
    if "negative_prompt" in fields:
        params["NegativePrompts"] = [fields["negative_prompt"]]
    for name, picpik in (("n", "BatchSize"), ("seed", "Seed")):
        if name in fields:
            params[picpik] = fields[name]
    inference = {
        picpik: fields[name]
        for name, picpik in (("steps", "Steps"), ("cfg_scale", "CFGScale"), ("sampler", "Sampler"))
        if name in fields
    }
    if inference:
        params["MainModel"]["InferenceParams"] = inference
    return params


def _only_model(services: Services) -> str:
    """Without `model`, the one main model installed; with several, the caller must choose."""
    installed = sorted(services.catalog.entries("main"))
    if len(installed) == 1:
        return installed[0]
    raise errors.ParamError(
        f"model: missing required field (this server has {', '.join(installed) or 'no main model'}; see GET /v1/models)"
    )


def _size(value: Any) -> tuple[int, int] | None:
    """`"1024x768"` → (1024, 768); None or "auto" → None (the default size). Ranges are to_spec's."""
    if value is None or value == "auto":
        return None
    found = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise errors.ParamError(
            f"size: must be WIDTHxHEIGHT in pixels, such as 1024x1024, or auto (got {messages.shown(value)})"
        )
    return int(found.group(1)), int(found.group(2))


def _response_format(fields: dict[str, Any]) -> str:
    chosen = fields.get("response_format", "url")
    if chosen not in ("url", "b64_json"):
        raise errors.ParamError(f"response_format: must be url or b64_json (got {messages.shown(chosen)})")
    return str(chosen)


def _number(name: str, text: Any, pattern: re.Pattern[str], kind: Callable[[str], Any]) -> Any:
    """A form field's text as the number it spells; ParamError otherwise."""
    if not isinstance(text, str) or pattern.fullmatch(text.strip()) is None:
        what = "an integer" if kind is int else "a number"
        raise errors.ParamError(f"{name}: must be {what}, got {messages.shown(text)}")
    return kind(text.strip())


def _repaint_mask(image: Image.Image) -> Image.Image:
    """OpenAI's mask (transparent = edit) → picserve's (white = repaint): 255 − alpha, so opaque pixels
    are kept exactly and partly transparent ones blended."""
    return Image.eval(image.getchannel("A"), lambda alpha: 255 - alpha)


# --- reading the body -----------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """At most `limit` bytes of body (PICSERVE_MAX_BODY_BYTES), as api/endpoint.py reads PICPIK's."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared[:18]) > limit:
        raise errors.ParamError(f"the request body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.ParamError(f"the request body is more than {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
    return b"".join(chunks)


def _form_fields(raw: bytes, content_type: str) -> dict[str, Any]:
    """A multipart/form-data body → {name: bytes for image and mask, text for the rest}.

    Parsed with the standard library's MIME parser (no extra dependency); a field sent twice is refused,
    except `image[]`, OpenAI's list of images, which may hold one.
    """
    if content_type.partition(";")[0].strip().lower() != "multipart/form-data" or "boundary=" not in content_type:
        raise errors.ParamError(
            f"Content-Type: must be multipart/form-data with a boundary, got {messages.shown(content_type)}"
        )
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
    if not message.is_multipart():
        raise errors.ParamError("the request body is not a multipart/form-data body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise errors.ParamError("a form part has no name (Content-Disposition: form-data; name=…)")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name in fields:
            if name in ("image", "image[]"):
                raise errors.ParamError("image: picserve edits one image per request (several were sent)")
            raise errors.ParamError(f"{name}: sent more than once")
        if name in ("image", "image[]", "mask"):
            fields[name] = data
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.ParamError(f"{name}: not valid UTF-8 text") from None
        if "\x00" in text:
            raise errors.ParamError(f"{name}: the text holds a NUL character (\\u0000)")
        fields[name] = text
    if "image" in fields and "image[]" in fields:
        raise errors.ParamError("image: picserve edits one image per request (image and image[] were both sent)")
    return fields


# --- waiting and answering ------------------------------------------------------------------------


async def _wait(services: Services, account: domain.Account, task_uid: str, request: Request) -> domain.TaskRecord:
    """The task once it has ended. A client that leaves, or a wait past `openai_wait_timeout`, cancels it
    (its images could never be delivered, and a cancelled task is not charged)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + services.settings.openai_wait_timeout
    delay = 0.05
    while True:
        (task,) = await services.tasks.get_many(account, [task_uid])
        if task.status.is_terminal:
            return task
        if loop.time() >= deadline:
            await services.tasks.cancel(account, [task_uid])
            raise _Refusal(
                504,
                f"task {task_uid} did not finish within {services.settings.openai_wait_timeout:g} s "
                "(PICSERVE_OPENAI_WAIT_TIMEOUT) and was cancelled; ask for fewer or smaller images, or retry later",
                "server_error",
                "timeout",
            )
        if await request.is_disconnected():
            await services.tasks.cancel(account, [task_uid])
            log.info("client left before task %s ended: cancelled", task_uid)
            raise _Refusal(
                499, "the client closed the connection; the task was cancelled", "server_error", "client_closed"
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 1.5, _POLL_MAX)


async def _answer(services: Services, task: domain.TaskRecord, response_format: str, base_url: str) -> dict[str, Any]:
    """OpenAI's ImagesResponse for a finished task; `seed` per image is a picserve extension."""
    spec = task.spec
    assert isinstance(spec, domain.GenerationSpec)  # what this route submits
    seeds = list(task.seeds or spec.seeds)
    translated = spec.original_prompt is not None and spec.prompt != spec.original_prompt
    data = []
    for i, key in enumerate(task.result_keys):
        item: dict[str, Any]
        if response_format == "b64_json":
            png = await asyncio.to_thread(services.store.get, key)
            if png is None:
                raise errors.StorageError(f"result {i} of task {task.task_uid} is no longer in the store")
            item = {"b64_json": base64.b64encode(png).decode("ascii")}
        else:
            item = {"url": services.result_url(key, base_url)}
        if translated:  # OpenAI's field for the prompt the model actually saw
            item["revised_prompt"] = spec.prompt
        if i < len(seeds):
            item["seed"] = seeds[i]
        data.append(item)
    created = task.created_at.timestamp() if task.created_at is not None else time.time()
    return {"created": int(created), "data": data}


def _model_list(services: Services) -> list[dict[str, Any]]:
    """Every main model as an OpenAI model object (`created`: the file's modification time)."""
    listed = []
    for code, entry in sorted(services.catalog.entries("main").items()):
        try:
            created = int(entry.path.stat().st_mtime)
        except OSError:  # removed since the scan
            continue
        listed.append({"id": code, "object": "model", "created": created, "owned_by": "picserve"})
    return listed

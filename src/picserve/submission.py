"""The one path from a decoded request to a queued task. No torch here.

Every PICPIK action that makes a task and every `/v1` route comes through `submit`, so what a task
goes through before it is queued is written once:

    submit(services, account, action, params, request)
     │ 0. admin            an operator's action (ImportModel) from a key that is not an admin: refused
     │ 1. idempotency      a resend of an accepted request (same key, request_uuid or Idempotency-Key,
     │                     same parameters) gets the first TaskUID back, before any other work
     │ 2. decode           messages.parse(kind.message, params): the wire message, strictly typed;
     │                     then its `task:<TaskUID>/<index>` images fetched (chaining.py)
     │ 3. spec             kind.to_spec(request, services), off the event loop (catalog reads, image
     │                     decoding, translation): a frozen, fully checked domain.ActionSpec
     │ 4. webhook          the request's own (checked: http(s), a public address unless allowed), else
     │                     the key's default, for `completed`
     │ 5. admission        the kind's memory plan against the live workers (off the loop); then, in
     │                     create_task's one statement: queue bound, open-task cap, credits
     │ 6. queue            the task row and its job; the TaskUID is durable once this returns
     ◄ TaskUID

On PostgreSQL that is three statements (a fourth counts the request where a rate limit applies): the
key (auth), the idempotency record with the live workers' memory (1 and 5's read,
`TaskService.before_submit`), and the submit itself (`picserve_submit_task_v1`, migration 0011).

A task kind that a client submits is one `Kind` in `KINDS`, keyed by its PICPIK Action name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from picserve import chaining, domain, errors
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import (
    backgrounds,
    cutout,
    describe,
    extract,
    faces,
    generation,
    masked_edit,
    model_import,
    reference_style,
    remove_contents,
    upscale,
)
from picserve.webhooks import rules

__all__ = ["KINDS", "Kind", "find_repeat", "submit"]


@dataclass(frozen=True)
class Kind:
    """What `submit` needs to know of one Action: its wire message, how a parsed message becomes a
    checked spec, and its memory plan (None: nothing to check against the workers' memory)."""

    message: type[BaseModel]
    #: (parsed message, services) → the spec; raises the ClientError naming the field (off the loop)
    to_spec: Callable[[Any, Services], domain.ActionSpec]
    #: (spec, live workers' (device, memory), catalog) → raises ParamError when no worker fits it
    check_memory: Callable[[Any, list[tuple[str, int]], Any], None] | None = None
    #: the wire fields holding base64 images (a string, or a list of them): where a `task:` reference
    #: to an earlier task's result may stand instead (chaining.py)
    image_fields: tuple[str, ...] = ()
    #: an operator's action: only admin keys (`picserve keys create --admin`) may send it
    admin_only: bool = False


#: the Actions that make tasks, by PICPIK name
KINDS: dict[str, Kind] = {
    "GenerateImagesSDXL": Kind(
        messages.GenerateImagesSDXL, generation.from_request, generation.check_memory, ("ImageAndMaskList",)
    ),
    "ApplyReferenceStyle": Kind(
        messages.ApplyReferenceStyle, reference_style.from_request, generation.check_memory, ("ImageList",)
    ),
    "ModifyMaskedPixels": Kind(
        messages.ModifyMaskedPixels, masked_edit.from_request, generation.check_memory, ("ImageAndMaskList",)
    ),
    "RemoveContents": Kind(
        messages.RemoveContents, remove_contents.from_request, remove_contents.check_memory, ("RawImage", "Mask")
    ),
    "ResizeImage": Kind(messages.ResizeImage, upscale.from_request, image_fields=("Image",)),
    "RemoveBackground": Kind(messages.RemoveBackground, cutout.from_request, image_fields=("RawImage",)),
    "RemoveBackgroundsInBatch": Kind(
        messages.RemoveBackgroundsInBatch, cutout.from_request, image_fields=("RawImages",)
    ),
    "GenerateBackgrounds": Kind(
        messages.GenerateBackgrounds, backgrounds.from_request, generation.check_memory, ("ImageList",)
    ),
    "RestoreFaces": Kind(messages.RestoreFaces, faces.from_request, image_fields=("RawImage",)),
    "ExtractContents": Kind(messages.ExtractContents, extract.from_request, image_fields=("RawImage",)),
    "DescribeImages": Kind(messages.DescribeImages, describe.from_request, image_fields=("ImageList",)),
    "ImportModel": Kind(messages.ImportModel, model_import.from_request, admin_only=True),
}


async def find_repeat(services: Services, account: domain.Account, request: domain.RequestId | None) -> str | None:
    """The TaskUID already made for `request` (a resend), or None; IdempotencyConflict when its id was
    used with other parameters."""
    return await services.tasks.find_repeat(account, request)


async def submit(
    services: Services,
    account: domain.Account,
    action: str,
    params: Mapping[str, Any],
    request: domain.RequestId | None = None,
) -> str:
    """Queue a task of `action` for `params` (the wire fields); its TaskUID."""
    kind = KINDS[action]
    if kind.admin_only and not account.admin:
        raise errors.AdminOnly(f"{action} needs an admin key (picserve keys create --admin); this key is not one")
    # 1, and the live workers' memory for 5, in one read
    live_after = services.settings.stalled_after if kind.check_memory is not None else None
    repeat, workers = await services.tasks.before_submit(account, request, live_after)
    if repeat is not None:
        return repeat
    parsed = messages.parse(kind.message, params)  # 2
    if kind.image_fields:
        parsed = await chaining.resolve(services, account, parsed, kind.image_fields)
    spec = await asyncio.to_thread(kind.to_spec, parsed, services)  # 3
    webhook = await _webhook(getattr(parsed, "Webhook", None), account, services.settings.webhook_allow)  # 4
    if kind.check_memory is not None and workers:  # 5
        await asyncio.to_thread(kind.check_memory, spec, workers, services.catalog)
    return await services.tasks.submit(account, action, spec, request, webhook)  # 5, 6


async def _webhook(
    given: messages.WebhookModel | None, account: domain.Account, allow: str | None
) -> domain.Webhook | None:
    """The request's Webhook, checked (http(s), a public address unless PICSERVE_WEBHOOK_ALLOW allows
    it); else the key's default (checked when it is delivered), for `completed`; else none."""
    if given is None:
        return domain.Webhook(account.webhook_url, ("completed",)) if account.webhook_url else None
    await rules.check(given.Url, rules.parse_allow(allow), "Webhook.Url")
    events = tuple(e for e in domain.WEBHOOK_EVENTS if e in given.Events)
    return domain.Webhook(given.Url, events)

"""Posting deliveries: the `picserve.deliver_webhook` job, and the worker that runs it in the API.

A delivery (store.py) is made in the transaction of its event; its job, on the queue "webhooks",
posts the task's TaskDetail with `"Event"` to the URL, signed (signing.py), and:

- 2xx: the delivery is recorded delivered.
- another status, a timeout or a connection error: the attempt and its error are recorded and the job
  raises `DeliveryFailed`, which procrastinate retries after `Backoff` (the first retry after
  PICSERVE_WEBHOOK_RETRY_DELAY seconds, doubling each time, at most an hour); after
  PICSERVE_WEBHOOK_MAX_ATTEMPTS attempts (3 at most for `start` and `progress`) it is recorded failed
  and logged.
- an address picserve does not call (rules.py, checked again now: DNS may have changed): failed at
  once.

Redirects are not followed, the response body is read no further than `_READ_LIMIT` bytes, and the
whole attempt takes at most a few times PICSERVE_WEBHOOK_TIMEOUT. A job whose API process died
mid-post is run again (the stalled-job sweep here): its delivery may then reach the receiver twice,
with the same webhook-id (and X-Picserve-Delivery, deprecated).

The API processes run the worker (`WebhookWorker`, procrastinate's own fetch on that queue only; the
generation workers fetch only "generation"), so `picserve serve --workers 0` delivers too; several
API nodes share the deliveries (procrastinate's fetch locks with SKIP LOCKED).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlunsplit

import httpx
import procrastinate
from procrastinate.jobs import Job
from procrastinate.worker import Worker

from picserve import errors, resilience
from picserve.config import Settings
from picserve.protocol.task_detail import task_detail
from picserve.storage.base import Store
from picserve.tasks import workers
from picserve.webhooks import QUEUE, TASK_NAME, rules, signing
from picserve.webhooks.store import DeliveryStore, Pending

__all__ = ["Backoff", "Deliverer", "DeliveryFailed", "WebhookWorker", "deliver_webhook", "register", "worker_for"]

log = logging.getLogger(__name__)

#: response bytes read at most (for the error message of a refusal)
_READ_LIMIT = 4096
#: attempts of a `start` or `progress` delivery at most (they need not arrive)
_MINOR_ATTEMPTS = 3
#: the longest wait between two attempts
_MAX_WAIT = 3600.0


class DeliveryFailed(Exception):
    """An attempt failed (non-2xx, timeout, connection error): procrastinate retries the job."""


@dataclass
class Backoff(procrastinate.BaseRetryStrategy):
    """Retry a failed delivery after `first` seconds, doubling each time, at most `_MAX_WAIT`. Any
    other exception is a bug: not retried."""

    first: float

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> Any:
        if not isinstance(exception, DeliveryFailed):
            return None
        wait = min(_MAX_WAIT, self.first * 2 ** min(job.attempts, 30))
        return procrastinate.RetryDecision(retry_in={"seconds": wait})


@dataclass
class Deliverer:
    """What a delivery job needs: the deliveries, result URLs, the rules and the HTTP settings."""

    store: DeliveryStore
    #: a result key → its URL (PICSERVE_PUBLIC_URL, else http://host:port; S3: presigned)
    url_of: Callable[[str], str]
    allow: rules.Allow = dataclasses.field(default_factory=rules.Allow)
    timeout: float = 5.0
    max_attempts: int = 10
    #: None: httpx's own; a test passes a MockTransport
    transport: httpx.AsyncBaseTransport | None = None
    resolve: rules.Resolver | None = None

    async def deliver(self, delivery_id: str) -> None:
        """One attempt at the delivery; raises DeliveryFailed when it should be tried again."""
        pending = await self.store.pending(delivery_id)
        if pending is None:
            log.info("webhook delivery %s: already made, failed or deleted; nothing to do", delivery_id)
            return
        delivery = pending.delivery
        attempt = delivery.attempts + 1
        limit = self.max_attempts if delivery.event == "completed" else min(self.max_attempts, _MINOR_ATTEMPTS)
        where = f"webhook {delivery.event} of task {delivery.task_uid} (delivery {delivery_id}, attempt {attempt})"
        try:
            target = await rules.target(delivery.url, self.allow, "webhook URL", self.resolve)
            status, text = await asyncio.wait_for(self._post(target, pending), 3 * self.timeout)
        except (rules.Refused, errors.ParamError) as exc:
            await self.store.record(delivery_id, "failed", str(exc))
            log.warning("%s: not sent: %s", where, exc)
            return
        except (rules.Unresolved, httpx.HTTPError, OSError, TimeoutError) as exc:
            error = str(exc) if isinstance(exc, rules.Unresolved) else f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            if 200 <= status < 300:
                await self.store.record(delivery_id, "delivered", None)
                log.info("%s: delivered (HTTP %d)", where, status)
                return
            error = f"HTTP {status}" + (f": {text}" if text else "")
        if attempt >= limit:
            await self.store.record(delivery_id, "failed", error)
            log.warning("%s: failed, no attempts left (%d): %s", where, limit, error)
            return
        await self.store.record(delivery_id, "pending", error)
        log.info("%s: failed (%s); retried later", where, error)
        raise DeliveryFailed(error)

    async def _post(self, target: rules.Target, pending: Pending) -> tuple[int, str]:
        """POST the delivery to the checked address; the status and the start of the response body."""
        delivery, task = pending.delivery, pending.task
        # the task as it was when the event happened: its status and progress then (results only once ended)
        then = dataclasses.replace(task, status=delivery.status, progress=delivery.progress)
        if not delivery.status.is_terminal:
            then = dataclasses.replace(then, result_keys=())
        body = json.dumps({**task_detail(then, self.url_of), "Event": delivery.event}, separators=(",", ":")).encode()
        headers = signing.headers(pending.private_key, delivery.event, delivery.delivery_id, body)
        url, extensions = target.url, {}
        if target.addresses:  # connect to the address checked, not to what DNS says a moment later
            address = target.addresses[0]
            shown = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
            url = urlunsplit(
                (target.parts.scheme, f"{shown}:{target.port}", target.parts.path or "/", target.parts.query, "")
            )
            headers["Host"] = target.parts.netloc.rpartition("@")[2]
            if target.parts.scheme == "https":
                extensions["sni_hostname"] = target.host
        async with (
            httpx.AsyncClient(
                transport=self.transport, timeout=self.timeout, follow_redirects=False, trust_env=False
            ) as client,
            client.stream("POST", url, content=body, headers=headers, extensions=extensions) as response,
        ):
            received = b""
            try:
                async for chunk in response.aiter_raw():
                    received += chunk
                    if len(received) >= _READ_LIMIT:
                        break
            except httpx.StreamConsumed:  # a transport that read it already (httpx's MockTransport)
                received = response.content[:_READ_LIMIT]
            return response.status_code, received[:200].decode("utf-8", "replace").strip()


async def deliver_webhook(context: procrastinate.JobContext, delivery_id: str) -> None:
    """The job: one attempt at one delivery (retried by procrastinate on DeliveryFailed)."""
    deliverer: Deliverer = context.additional_context["picserve_webhooks"]
    await deliverer.deliver(delivery_id)


def register(app: procrastinate.App, first_retry: float) -> procrastinate.App:
    """Register the delivery job on `app` (any connector), retried by `Backoff(first_retry)`."""
    if TASK_NAME not in app.tasks:
        app.task(name=TASK_NAME, queue=QUEUE, pass_context=True, retry=Backoff(first_retry))(deliver_webhook)
    return app


@dataclass
class WebhookWorker:
    """Runs the delivery jobs of `app` in this (API) process, `concurrency` at a time."""

    app: procrastinate.App
    deliverer: Deliverer
    concurrency: int = 4
    heartbeat_interval: float = 5.0
    stalled_after: float = 30.0

    def _worker(self, burst: bool) -> Worker:
        return Worker(
            app=self.app,
            queues=[QUEUE],
            name=f"webhooks:{socket.gethostname()}:{os.getpid()}",
            concurrency=self.concurrency,
            additional_context={"picserve_webhooks": self.deliverer},
            update_heartbeat_interval=self.heartbeat_interval,
            # procrastinate prunes the worker rows silent this long when a Worker starts, on every queue:
            # a generation worker that waited out a database outage must not lose its row to a webhook
            # loop started again after the same outage, so only the long dead go (as in tasks/workers.py)
            stalled_worker_timeout=workers.AGE_OUT * self.stalled_after,
            delete_jobs="successful",
            install_signal_handlers=False,
            wait=not burst,
            shutdown_graceful_timeout=self.deliverer.timeout * 3,
        )

    async def run_once(self) -> None:
        """Run the deliveries queued now, and those they queue again at once; then return (tests)."""
        await self._worker(burst=True).run()

    async def run_forever(self) -> None:
        """Deliver until cancelled: procrastinate's loop, started again after an error (a database
        outage ends it), beside a sweep that queues again the deliveries of dead API processes."""
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await resilience.run_restarting("webhook worker", lambda: self._worker(burst=False).run())
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self.stalled_after / 3, 0.5))
            try:
                stalled = await self.app.job_manager.get_stalled_jobs(
                    task_name=TASK_NAME, seconds_since_heartbeat=self.stalled_after
                )
                for job in stalled:
                    await self.app.job_manager.retry_job(job)
                    log.warning("webhook delivery job %s: its API process stopped; queued again", job.id)
            except Exception as exc:  # the database away: the next sweep tries again
                log.debug("webhook sweep failed: %s", exc)


def worker_for(
    settings: Settings, app: procrastinate.App, deliveries: DeliveryStore, results: Store, **options: Any
) -> WebhookWorker:
    """The webhook worker of an API process: the delivery job registered on `app` (its fetch is
    procrastinate's own), with `settings`' rules, timeouts and retries. `options` go to the Deliverer
    (a test's transport or resolver)."""
    register(app, settings.webhook_retry_delay)
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    deliverer = Deliverer(
        deliveries,
        lambda key: results.url(key, base),
        rules.parse_allow(settings.webhook_allow),
        timeout=settings.webhook_timeout,
        max_attempts=settings.webhook_max_attempts,
        **options,
    )
    return WebhookWorker(
        app,
        deliverer,
        concurrency=settings.webhook_concurrency,
        heartbeat_interval=settings.heartbeat_interval,
        stalled_after=settings.stalled_after,
    )

"""Webhooks: a task's events (start, progress, completed) posted, signed, to a URL its request or its
key names, through the queue (retried with backoff, never lost: see delivery.py).

- `rules.py`: which URLs may be called (http(s) only, no private addresses unless allowed).
- `signing.py`: the signature and headers a receiver checks.
- `store.py`: the deliveries, on PostgreSQL (made by migration 0006's trigger) or in memory.
- `delivery.py`: the job that posts one delivery, and the worker that runs those jobs in the API.

The queue and job names are durable, so they live with the task queue's (tasks/queue.py).
"""

from __future__ import annotations

from picserve.tasks.queue import WEBHOOK_QUEUE as QUEUE
from picserve.tasks.queue import WEBHOOK_TASK_NAME as TASK_NAME

__all__ = ["QUEUE", "TASK_NAME"]

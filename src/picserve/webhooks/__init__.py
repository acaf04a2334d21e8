"""Webhooks: a task's events (start, progress, completed) posted, signed, to a URL its request or its
key names, through the queue (retried with backoff, never lost: see delivery.py).

- `rules.py`: which URLs may be called (http(s) only, no private addresses unless allowed).
- `signing.py`: the signature and headers a receiver checks.
- `store.py`: the deliveries, on PostgreSQL (made by migration 0006's trigger) or in memory.
- `delivery.py`: the job that posts one delivery, and the worker that runs those jobs in the API.

Only the names below are imported by `picserve.tasks` (to queue a delivery): this module imports
nothing.
"""

from __future__ import annotations

__all__ = ["QUEUE", "TASK_NAME"]

#: the procrastinate queue of deliveries (the API processes run it; generation workers never do)
QUEUE = "webhooks"
#: the job that posts one delivery: its args are {"delivery_id": …} (migration 0006 defers it by name)
TASK_NAME = "picserve.deliver_webhook"

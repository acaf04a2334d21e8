"""The queue's names: what a task's procrastinate job is called and on which queue it waits.

They are durable (stored in every job row), so they never change; the API defers by name
(`App.configure_task`) and the worker registers the function behind it (worker/jobs.py).
"""

from __future__ import annotations

__all__ = ["QUEUE", "TASK_NAME", "WEBHOOK_QUEUE", "WEBHOOK_TASK_NAME"]

#: the queue of every task's job (the webhook deliveries have their own)
QUEUE = "generation"
#: the job that runs a task of any kind (the name dates from when a task was only a generation)
TASK_NAME = "picserve.run_generation"

#: the procrastinate queue of webhook deliveries (the API processes run it; task workers never do)
WEBHOOK_QUEUE = "webhooks"
#: the job that posts one delivery (webhooks/delivery.py): its args are {"delivery_id": …}; migration
#: 0006's trigger defers it by name
WEBHOOK_TASK_NAME = "picserve.deliver_webhook"

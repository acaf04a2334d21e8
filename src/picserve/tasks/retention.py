"""What is kept and for how long: expired result files, and ended tasks past their retention.

Every API process runs `clean_forever`; each step is idempotent, so several processes sweeping the
same database and store do no harm. A sweep that fails (the database unreachable, say) is logged and
the next one comes on time: the loop never ends before its process.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from picserve import errors
from picserve.storage.base import Store
from picserve.tasks import references
from picserve.tasks.repository import TaskRepository

__all__ = ["clean", "clean_forever"]

log = logging.getLogger(__name__)


async def clean(repo: TaskRepository, store: Store, task_retention: float) -> tuple[int, int]:
    """Delete expired result files, then the tasks that ended more than `task_retention` seconds ago
    together with their files (results, and the references of tasks that never ran); returns
    (results expired, tasks deleted)."""
    expired = await asyncio.to_thread(store.expire)
    cutoff = datetime.now(UTC) - timedelta(seconds=task_retention)
    deleted = await repo.delete_ended_before(cutoff)
    for task in deleted:
        for key in [*task.result_keys, *references.keys(task.spec)]:
            await asyncio.to_thread(store.delete, key)
    return expired, len(deleted)


async def clean_forever(repo: TaskRepository, store: Store, task_retention: float, every: float) -> None:
    while True:
        try:
            expired, deleted = await clean(repo, store, task_retention)
            if expired or deleted:
                log.info("removed %d expired results and the files of %d tasks past retention", expired, deleted)
        except errors.ServerBusy as exc:  # the database unreachable: nothing to fix here, try next time
            log.warning("cleanup skipped: %s; next in %g s", exc, every)
        except Exception:
            log.exception("cleanup failed")
        await asyncio.sleep(every)

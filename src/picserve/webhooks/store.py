"""The deliveries a delivery job reads and writes: on PostgreSQL (migration 0006 makes them, in the
transaction of the task's change) or in the in-memory repository (which makes them the same way)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from picserve import domain
from picserve.keycipher import KeyCipher
from picserve.tasks.memory import InMemoryRepository

__all__ = ["DeliveryStore", "MemoryDeliveries", "Pending", "PostgresDeliveries"]


@dataclass(frozen=True)
class Pending:
    """A delivery still to make, with its task (as it is now) and the private key that signs it."""

    delivery: domain.WebhookDelivery
    task: domain.TaskRecord
    private_key: str = dataclasses.field(repr=False)


class DeliveryStore(Protocol):
    async def pending(self, delivery_id: str) -> Pending | None:
        """The delivery when it is still pending; None once delivered or failed, or when it (or its
        task, with it) was deleted."""
        ...

    async def record(self, delivery_id: str, state: str, error: str | None) -> None:
        """One more attempt, its error (None: none), and the state it leaves: "pending" (to be tried
        again), "delivered" (now) or "failed" (no more attempts)."""
        ...


_PENDING = (
    "SELECT d.delivery_id, d.event, d.url AS delivery_url, d.task_status, d.progress AS delivery_progress, "
    "d.state, d.attempts, d.last_error, d.delivered_at, k.private_key, t.* "
    "FROM picserve_webhook_deliveries d JOIN picserve_tasks t ON t.task_uid = d.task_uid "
    "JOIN picserve_keys k ON k.public_key = t.public_key WHERE d.delivery_id = %s AND d.state = 'pending'"
)


class PostgresDeliveries:
    """Deliveries in picserve_webhook_deliveries; private keys opened with `cipher`."""

    def __init__(self, pool: AsyncConnectionPool[Any], cipher: KeyCipher) -> None:
        self.pool = pool
        self.cipher = cipher

    async def pending(self, delivery_id: str) -> Pending | None:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(_PENDING, (delivery_id,))
            row = await cur.fetchone()
        if row is None:
            return None
        task = domain.TaskRecord.from_row(row)
        delivery = domain.WebhookDelivery(
            delivery_id=row["delivery_id"],
            task_uid=task.task_uid,
            public_key=task.public_key,
            event=row["event"],
            url=row["delivery_url"],
            status=domain.TaskStatus(row["task_status"]),
            progress=row["delivery_progress"],
            attempts=row["attempts"],
            state=row["state"],
            last_error=row["last_error"],
            delivered_at=row["delivered_at"],
        )
        return Pending(delivery, task, self.cipher.open(row["private_key"]))

    async def record(self, delivery_id: str, state: str, error: str | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE picserve_webhook_deliveries SET attempts = attempts + 1, state = %s, last_error = %s, "
                "delivered_at = CASE WHEN %s = 'delivered' THEN now() END WHERE delivery_id = %s",
                (state, error, state, delivery_id),
            )


class MemoryDeliveries:
    """The deliveries of an InMemoryRepository (its `deliveries`, made as the trigger makes them)."""

    def __init__(self, repo: InMemoryRepository) -> None:
        self.repo = repo

    async def pending(self, delivery_id: str) -> Pending | None:
        delivery = self.repo.deliveries.get(delivery_id)
        if delivery is None or delivery.state != "pending":
            return None
        tasks = await self.repo.get_many([delivery.task_uid], delivery.public_key)
        account = await self.repo.get_account(delivery.public_key)
        if not tasks or account is None:
            return None
        return Pending(delivery, tasks[0], account.private_key)

    async def record(self, delivery_id: str, state: str, error: str | None) -> None:
        delivery = self.repo.deliveries.get(delivery_id)
        if delivery is not None:
            self.repo.deliveries[delivery_id] = dataclasses.replace(
                delivery,
                attempts=delivery.attempts + 1,
                state=state,
                last_error=error,
                delivered_at=datetime.now(UTC) if state == "delivered" else None,
            )

"""Services: what every action handler may use, built once per API process (or injected by a test)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from picserve.catalog import Catalog
from picserve.config import Settings
from picserve.storage.base import Store
from picserve.tasks.repository import TaskRepository
from picserve.tasks.service import TaskService
from picserve.translate.prompts import PromptTranslator

if TYPE_CHECKING:
    from picserve.webhooks.delivery import WebhookWorker

__all__ = ["Services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    #: keys and tasks (any TaskRepository: PostgreSQL in production, in memory in the fast tests)
    repo: TaskRepository
    #: the task rules on top of `repo`
    tasks: TaskService
    catalog: Catalog
    store: Store
    #: None: prompts are never translated
    translator: PromptTranslator | None
    #: runs the webhook deliveries in this process (None: none are made here)
    webhooks: WebhookWorker | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        repo: TaskRepository,
        store: Store,
        catalog: Catalog | None = None,
        translator: PromptTranslator | None = None,
        webhooks: WebhookWorker | None = None,
    ) -> Services:
        """Services on `repo` and `store`; the catalog comes from `settings` unless given."""
        return cls(
            settings=settings,
            repo=repo,
            tasks=TaskService(repo, store, settings.credit_divisor, settings.max_queued_tasks, settings.max_open_tasks),
            catalog=catalog or Catalog.of(settings),
            store=store,
            translator=translator,
            webhooks=webhooks,
        )

    def result_url(self, key: str, request_base: str) -> str:
        return self.store.url(key, self.settings.public_url or request_base)

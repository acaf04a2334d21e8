"""What every action handler may use: built once per process by `app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from picserve import catalog as catalog_module
from picserve.config import Settings
from picserve.storage.disk import DiskStore
from picserve.tasks import repo as repo_module
from picserve.tasks import service as service_module
from picserve.translate.prompts import PromptTranslator

__all__ = ["Context"]


@dataclass
class Context:
    settings: Settings
    tasks: service_module.TaskService
    repo: repo_module.TaskRepo
    catalog: catalog_module.Catalog
    store: DiskStore
    translator: PromptTranslator

    def result_url(self, key: str, request_base: str) -> str:
        return self.store.url(key, self.settings.public_url or request_base)

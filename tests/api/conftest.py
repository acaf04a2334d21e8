"""The API, the SDK and the real worker loop on the in-memory repository and store, with FakeEngine.

No PostgreSQL, no torch, no model weights: the fast tier. The models folder holds header-only files
(tests/headers.py), which is all the catalog and the submit-time checks read.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from picserve import model_import
from picserve.api.app import create_app
from picserve.config import Settings
from picserve.engine.base import GenerationEngine
from picserve.engine.fake import FakeEngine
from picserve.sdk import Client
from picserve.services import Services
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from picserve.worker import jobs, process
from tests.headers import SD1_LORA, SDXL_LORA, SDXL_MAIN, write_header

MODEL = "fast-xl"


@pytest.fixture
def models_folder(tmp_path) -> Path:
    root = tmp_path / "models"
    write_header(root / "main" / f"{MODEL}.safetensors", SDXL_MAIN)
    (root / "main" / f"{MODEL}.json").write_text(json.dumps({"Name": "Fast XL", "InferenceParams": {"Steps": 6}}))
    write_header(root / "lora" / "xl-style.safetensors", SDXL_LORA)
    (root / "lora" / "xl-style.json").write_text(json.dumps({"TriggerWordList": ["inkstyle"]}))
    write_header(root / "lora" / "sd1-style.safetensors", SD1_LORA)
    write_header(root / "embedding" / "emb-xl.safetensors", {"clip_l": (2, 768), "clip_g": (2, 1280)})
    return root


@pytest.fixture
def instant_resends(monkeypatch) -> None:
    """The SDK resends a request lost in transit at once instead of after its backoff (0.25 s, then
    0.5 s): for tests of an unreachable server, which wait out every resend."""
    monkeypatch.setattr("picserve.sdk._shared.backoff", lambda attempt: 0.0)


@pytest.fixture
def settings(tmp_path, models_folder) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models_folder, progress_interval=0.0, device="cpu")


@dataclass
class Stack:
    """One in-process picserve: the app behind a TestClient, and what it runs on."""

    api: TestClient
    repo: InMemoryRepository
    store: MemoryStore
    settings: Settings

    def client(self, credits: int = 100_000, name: str = "test") -> Client:
        """An SDK client on a new key, talking to the in-process app."""
        account = self.api.portal.call(self.repo.create_key, name, credits)
        return Client("http://testserver", account.public_key, account.private_key, http=self.api)

    def run_worker(self, engine: GenerationEngine | None = None) -> GenerationEngine:
        """Run every queued job with the real worker loop (and `engine`, a FakeEngine by default)."""
        engine = engine or FakeEngine()
        runtime = jobs.WorkerRuntime(
            repo=self.repo,
            engine=engine,
            store=self.store,
            name="fast-worker",
            actions=model_import.actions(self.settings),
        )
        self.api.portal.call(process.work, self.repo.app, runtime, self.settings, True)
        return engine


@contextmanager
def open_stack(settings: Settings) -> Iterator[Stack]:
    """An in-process picserve on `settings` (e.g. the fixture's, evolved) for the block."""
    repo = InMemoryRepository(in_memory_app())
    store = MemoryStore(settings.result_ttl_seconds)
    services = Services.build(settings, repo=repo, store=store)
    with TestClient(create_app(settings, services)) as api:
        api.portal.call(repo.app.open_async)  # binds the in-memory connector to the app's event loop
        yield Stack(api=api, repo=repo, store=store, settings=settings)


@pytest.fixture
def stack(settings) -> Iterator[Stack]:
    with open_stack(settings) as opened:
        yield opened


@pytest.fixture
def client(stack) -> Client:
    return stack.client()


def request(**overrides: object) -> dict[str, object]:
    """A small valid GenerateImagesSDXL request, with `overrides`."""
    body: dict[str, object] = {
        "MainModel": {"ModelCode": MODEL},
        "PositivePrompts": ["a photo of a cat"],
        "Width": 64,
        "Height": 72,
        "Seed": 1,
        "TranslatePrompts": False,
    }
    body.update(overrides)
    return body


RequestFactory = Callable[..., dict[str, object]]


def recording() -> tuple[Client, list[dict[str, typing.Any]]]:
    """A client whose every call is answered with a TaskUID, and the bodies it sent (the SDK tests')."""
    sent: list[dict[str, typing.Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = httpx.Response(200, content=request.content).json()
        sent.append(body)
        return httpx.Response(200, json={"Action": body["Action"], "RetCode": 0, "Message": "", "TaskUID": "t1"})

    return Client("http://picpik.test", "pub", "priv", transport=httpx.MockTransport(answer)), sent


def own_fields(body: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """A sent body without the envelope: the action's own fields."""
    return {k: v for k, v in body.items() if k not in ("Action", "PublicKey", "Signature", "request_uuid")}

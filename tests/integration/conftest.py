import asyncio
import io
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from picserve.api.app import create_app, services_of
from picserve.config import Settings
from picserve.sdk import Client
from picserve.worker import process


@pytest.fixture
def settings(tmp_path, models_dir, database_url):
    return Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        database_url=database_url,
        heartbeat_interval=0.5,
        stalled_after=3.0,
        progress_interval=0.0,
        device="cpu",
    )


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def make_client(api):
    """make_client(credits) → an SDK client on a new key, talking to the in-process app."""

    def make(credits: int = 100_000, name: str = "test") -> Client:
        account = api.portal.call(services_of(api.app).repo.create_key, name, credits)
        return Client("http://testserver", account.public_key, account.private_key, http=api)

    return make


@pytest.fixture
def run_worker(settings, engine):
    """Drain the queue with the real worker code and the session's engine."""

    def run(name: str = "test-worker") -> None:
        asyncio.run(process.run_worker(settings, settings.database_url, name=name, burst=True, engine=engine))

    return run


def tiny_request(**overrides):
    request = {
        "MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 6}},
        "PositivePrompts": ["a photo of a cat"],
        "Width": 64,
        "Height": 64,
        "Seed": 1,
    }
    request.update(overrides)
    return request


@dataclass
class Result:
    images: list  #: the task's images as int16 RGB arrays
    detail: dict  #: its TaskDetail
    texts: list  #: each PNG's A1111 `parameters` text


@pytest.fixture
def generate(make_client, run_worker):
    """generate(**fields) → Result of a task run to completion through the API and the real worker."""
    client = make_client()

    def go(**fields) -> Result:
        uid = client.generate_images_sdxl(**tiny_request(**fields))
        run_worker()
        detail = client.list_tasks_details([uid])[0]
        assert detail["Status"] == "Finished", detail
        pngs = [Image.open(io.BytesIO(client.fetch(u))) for u in detail["ImgList"]]
        return Result(
            [np.asarray(p.convert("RGB"), dtype=np.int16) for p in pngs], detail, [p.text["parameters"] for p in pngs]
        )

    return go

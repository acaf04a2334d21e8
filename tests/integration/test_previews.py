"""Live previews through the API: present while a task runs, absent once it ended; off when disabled."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import pytest
from PIL import Image

from picserve.engine.fake import FakeEngine
from picserve.worker import process

from .conftest import tiny_request


def _run_worker_in_thread(settings, engine) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: asyncio.run(
            process.run_worker(settings, settings.database_url, name="preview-worker", burst=True, engine=engine)
        ),
        daemon=True,
    )
    thread.start()
    return thread


@pytest.mark.parametrize("previews", [True, False])
def test_a_running_task_shows_a_preview_that_is_gone_once_it_ends(settings, make_client, previews):
    client = make_client()
    request = tiny_request(Width=128, Height=96)
    request["MainModel"]["InferenceParams"]["Steps"] = 40
    uid = client.generate_images_sdxl(**request)
    worker_settings = settings.evolve(previews=previews, preview_interval=0.05, progress_interval=0.05)
    thread = _run_worker_in_thread(worker_settings, FakeEngine(step_seconds=0.05))  # 2 s of steps
    seen: list[dict] = []
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        (detail,) = client.list_tasks_details([uid])
        if detail["Status"] == "Running" and detail["Progress"] > 0.2:
            seen.append(detail)
            if len(seen) >= 3:
                break
        time.sleep(0.05)
    thread.join(60)
    (final,) = client.list_tasks_details([uid])
    assert final["Status"] == "Finished" and "PreviewImage" not in final
    assert seen, "never saw the task running"
    with_preview = [d for d in seen if "PreviewImage" in d]
    if not previews:
        assert not with_preview
        return
    assert with_preview, seen
    uri = with_preview[-1]["PreviewImage"]
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert (image.format, image.size) == ("JPEG", (16, 12))  # an eighth of 128×96
    assert 0 < image.getpixel((0, 0))[0] < 255  # FakeEngine's preview: grey as light as the progress

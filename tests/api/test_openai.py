"""The OpenAI-compatible endpoint's mapping, fast: the in-memory stack, FakeEngine, a worker running beside
the app. Every refusal is OpenAI's error object with OpenAI's status; a task that fails, or outlasts
PICSERVE_OPENAI_WAIT_TIMEOUT, ends the request without a traceback (tests/acceptance/test_openai.py runs
the real model through OpenAI's own client).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from picserve import domain, errors
from picserve.engine.fake import FakeEngine
from picserve.sdk import Client
from picserve.worker import jobs, process

from .conftest import MODEL, Stack, open_stack


@pytest.fixture
def settings(settings):
    return settings.evolve(openai_wait_timeout=2.0)


def bearer(account: domain.Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.public_key}.{account.private_key}"}


@pytest.fixture
def account(stack) -> domain.Account:
    return stack.api.portal.call(stack.repo.create_key, "openai", 100_000)


@contextlib.contextmanager
def working(stack: Stack, engine: FakeEngine) -> Iterator[None]:
    """A worker beside the app, on its event loop, for as long as the `with` lasts."""

    async def keep_working() -> None:
        runtime = jobs.WorkerRuntime(repo=stack.repo, engine=engine, store=stack.store, name="openai-worker")
        while True:
            await process.work(stack.repo.app, runtime, stack.settings, True)
            await asyncio.sleep(0.02)

    future = stack.api.portal.start_task_soon(keep_working)
    try:
        yield
    finally:
        future.cancel()


@pytest.fixture
def worker_running(stack) -> Iterator[FakeEngine]:
    engine = FakeEngine()
    with working(stack, engine):
        yield engine


def generate(stack: Stack, account: domain.Account, **fields: object):
    body = {"model": MODEL, "prompt": "a cat", "size": "64x64", "steps": 6, **fields}
    return stack.api.post("/v1/images/generations", json=body, headers=bearer(account))


def error_of(reply) -> dict:
    assert set(reply.json()) == {"error"}, reply.json()
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_generation_maps_onto_generate_images_sdxl_and_waits_for_its_images(stack, account, worker_running):
    reply = generate(
        stack, account, n=2, seed=11, negative_prompt="blurry", cfg_scale=3, sampler="DPM++ 2M", quality="hd", user="u1"
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert [item["seed"] for item in data] == [11, 12]
    assert all(item["url"].startswith("http://testserver/results/") for item in data)
    (spec,) = worker_running.calls
    assert (spec.width, spec.height, spec.batch_size, spec.steps, spec.seed) == (64, 64, 2, 6, 11)
    assert (spec.negative_prompt, spec.cfg_scale, spec.sampler, spec.model_code) == ("blurry", 3.0, "DPM++ 2M", MODEL)

    b64 = generate(stack, account, response_format="b64_json").json()["data"]
    assert Image.open(io.BytesIO(base64.b64decode(b64[0]["b64_json"]))).size == (64, 64)
    # the same task as any other: charged, listed, under the PICPIK action's name
    open_tasks = stack.api.portal.call(stack.repo.open_tasks, account.public_key)
    assert open_tasks == []


def test_an_edit_turns_the_alpha_mask_into_a_white_repaint_mask(stack, account, worker_running):
    image = io.BytesIO()
    Image.new("RGB", (80, 64), "red").save(image, format="PNG")
    mask = Image.new("RGBA", (80, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 40, 64))  # the left half is transparent: edit it
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    reply = stack.api.post(
        "/v1/images/edits",
        data={"model": MODEL, "prompt": "a cat", "steps": "6", "n": "1", "seed": "3"},
        files={"image": ("i.png", image.getvalue(), "image/png"), "mask": ("m.png", mask_png.getvalue(), "image/png")},
        headers=bearer(account),
    )
    assert reply.status_code == 200, reply.text
    (spec,) = worker_running.calls
    assert (spec.width, spec.height, spec.strength, spec.seed) == (80, 64, 1.0, 3)
    repaint = Image.open(io.BytesIO(base64.b64decode(spec.mask_image)))
    assert repaint.mode == "L"
    assert repaint.getpixel((10, 10)) == 255 and repaint.getpixel((70, 10)) == 0

    # without a mask, and an image without transparency: img2img on the whole image
    image.seek(0)
    plain = stack.api.post(
        "/v1/images/edits",
        data={"model": MODEL, "prompt": "a cat", "steps": "6", "size": "64x64", "strength": "0.5"},
        files={"image[]": ("i.png", image.getvalue(), "image/png")},
        headers=bearer(account),
    )
    assert plain.status_code == 200, plain.text
    assert worker_running.calls[1].mask_image is None and worker_running.calls[1].strength == 0.5


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"size": "64x9000"}, "size", "size: Height must be between 64 and 2560 (got 9000)"),
        ({"size": "huge"}, "size", "size: must be WIDTHxHEIGHT in pixels"),
        ({"n": "2"}, "n", "n: BatchSize must be a JSON integer"),
        ({"steps": 2}, "steps", "steps: MainModel.InferenceParams.Steps must be between 6 and 100 (got 2)"),
        ({"sampler": "Nope"}, "sampler", "sampler: MainModel.InferenceParams.Sampler unknown sampler 'Nope'"),
        ({"prompt": None}, "prompt", "prompt: missing required field"),
        ({"response_format": "png"}, "response_format", "response_format: must be url or b64_json"),
        ({"stream": True}, "stream", "stream: streaming is not supported"),
        ({"output_format": "jpeg"}, "output_format", "output_format: picserve makes PNG images only"),
        ({"colour": "red"}, "colour", "colour: unrecognized request argument supplied"),
    ],
)
def test_invalid_fields_are_400_naming_the_openai_field(stack, account, fields, param, message):
    reply = generate(stack, account, **fields)
    assert reply.status_code == 400
    error = error_of(reply)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert error["message"].startswith(message), error["message"]


def test_keys_are_checked_as_signed_requests_are(stack, account):
    assert error_of(stack.api.post("/v1/images/generations", json={}))["code"] == "invalid_api_key"
    wrong = {"Authorization": f"Bearer {account.public_key}.{'0' * 48}"}
    reply = stack.api.post("/v1/images/generations", json={}, headers=wrong)
    assert reply.status_code == 401 and "not this key's" in error_of(reply)["message"]

    stack.api.portal.call(stack.repo.set_limits, account.public_key, None, 1)
    assert stack.api.get("/v1/models", headers=bearer(account)).status_code == 200
    limited = stack.api.get("/v1/models", headers=bearer(account))
    assert limited.status_code == 429 and error_of(limited)["code"] == "rate_limit_exceeded"

    stack.api.portal.call(stack.repo.revoke_key, account.public_key)
    revoked = stack.api.get("/v1/models", headers=bearer(account))
    assert revoked.status_code == 401 and "unknown or revoked" in error_of(revoked)["message"]


def test_credits_apply_as_they_do_to_picpik_requests(stack):
    poor = stack.api.portal.call(stack.repo.create_key, "poor", 0)
    reply = generate(stack, poor)
    assert reply.status_code == 429 and reply.headers["x-should-retry"] == "false"
    assert error_of(reply)["code"] == "insufficient_quota"


def test_a_task_that_runs_out_of_memory_is_a_503_the_client_does_not_retry(stack, account):
    engine = FakeEngine(max_chunk=4, memory_pixels=64 * 64 - 1)
    with working(stack, engine):
        reply = generate(stack, account)
    assert reply.status_code == 503 and reply.headers["x-should-retry"] == "false"
    error = error_of(reply)
    assert error["code"] == "out_of_memory" and "ran out of memory" in error["message"]


def test_a_task_past_the_wait_timeout_is_cancelled_and_answered_504(settings):
    with open_stack(settings.evolve(openai_wait_timeout=0.3)) as stack:  # the wait, shorter than the module's
        account = stack.api.portal.call(stack.repo.create_key, "openai", 100_000)
        reply = generate(stack, account)  # no worker: it never starts
        assert reply.status_code == 504 and reply.headers["x-should-retry"] == "false"
        assert "PICSERVE_OPENAI_WAIT_TIMEOUT" in error_of(reply)["message"]
        assert stack.api.portal.call(stack.repo.open_tasks, account.public_key) == []  # cancelled, not charged


def test_models_lists_main_models_as_openai_does(stack, account):
    listed = stack.api.get("/v1/models", headers=bearer(account)).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == [MODEL]
    assert stack.api.get(f"/v1/models/{MODEL}", headers=bearer(account)).json()["owned_by"] == "picserve"
    missing = stack.api.get("/v1/models/dall-e-3", headers=bearer(account))
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"
    # with one main model installed, `model` may be left out: the request reaches the next check
    assert error_of(generate(stack, account, model=None, steps=2))["param"] == "steps"


# --- one submission path (issue 21): what the PICPIK path does, the OpenAI routes do too -----------


def test_an_oversized_request_is_refused_exactly_as_generate_images_sdxl_refuses_it(stack, account, monkeypatch):
    """The memory admission check: with only a 1 GiB worker live, 2048² is refused on both paths,
    for the same reason, before anything is queued."""

    async def one_small_worker(live_after: float) -> list[tuple[str, int]]:
        return [("cuda:0", 2**30)]

    monkeypatch.setattr(stack.repo, "worker_memory", one_small_worker)
    picpik = Client("http://testserver", account.public_key, account.private_key, http=stack.api)
    with pytest.raises(errors.ParamError) as refused:
        picpik.generate_images_sdxl(
            MainModel={"ModelCode": MODEL}, PositivePrompts=["a cat"], Width=2048, Height=2048, Seed=1
        )
    assert refused.value.message.startswith("Width/Height: 2048×2048 needs about "), refused.value.message
    reply = generate(stack, account, size="2048x2048")
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert error["param"] == "size" and error["code"] == "invalid_value"
    # the same sentence, led by OpenAI's name for the field
    assert error["message"] == "size: " + refused.value.message.replace(": ", " ", 1), error["message"]
    assert stack.api.portal.call(stack.repo.queued_count) == 0


def test_the_keys_default_webhook_fires_for_an_openai_request(stack, account, worker_running):
    hook = "https://8.8.8.8/hook"
    assert stack.api.portal.call(stack.repo.set_webhook, account.public_key, hook)
    reply = generate(stack, account)
    assert reply.status_code == 200, reply.text
    (task,) = stack.api.portal.call(stack.repo.list_tasks, [], account.public_key, None, 10)
    assert task.webhook is not None and (task.webhook.url, task.webhook.events) == (hook, ("completed",))
    # the delivery was made in the transaction of the task's ending, as for a PICPIK request
    made = [d for d in stack.repo.deliveries.values() if d.task_uid == task.task_uid]
    assert [(d.event, d.url) for d in made] == [("completed", hook)]


def test_a_repeated_idempotency_key_returns_one_task(stack, account, worker_running):
    headers = {**bearer(account), "Idempotency-Key": "order-42"}
    body = {"model": MODEL, "prompt": "a cat", "size": "64x64", "steps": 6, "seed": 3}
    first = stack.api.post("/v1/images/generations", json=body, headers=headers)
    again = stack.api.post("/v1/images/generations", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == again.json()  # the same task's images, by the same URLs
    tasks = stack.api.portal.call(stack.repo.list_tasks, [], account.public_key, None, 10)
    assert len(tasks) == 1
    balance = stack.api.portal.call(stack.repo.get_account, account.public_key)
    assert balance is not None and balance.used_credits == tasks[0].cost  # charged once
    # the same key with other parameters is refused, as a reused request_uuid is; another key is a new task
    other = stack.api.post("/v1/images/generations", json={**body, "seed": 4}, headers=headers)
    assert other.status_code == 400, other.text
    assert error_of(other)["message"].startswith("Idempotency-Key 'order-42' was already used for task ")
    fresh = stack.api.post("/v1/images/generations", json=body, headers={**headers, "Idempotency-Key": "order-43"})
    assert fresh.status_code == 200
    assert len(stack.api.portal.call(stack.repo.list_tasks, [], account.public_key, None, 10)) == 2
    bad = stack.api.post("/v1/images/generations", json=body, headers={**headers, "Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and error_of(bad)["message"].startswith("Idempotency-Key: must be 1 to 255")

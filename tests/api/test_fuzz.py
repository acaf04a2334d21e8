"""Hostile clients: every action, correctly signed, with its fields mutated, and raw bodies; never a 500.

The cases come from tests/fuzzing.py (also run, 100,000 at a time, by bench/fuzz.py against a real
server). Each reply must be HTTP 200, a JSON object and an int RetCode other than 500, and the server
must answer a valid request afterwards. Derandomized: every run sends the same cases. The pytest summary
prints how many were sent.

The app runs in this thread's own event loop behind httpx's ASGITransport (a third of TestClient's
cost per request, which hands each one to a portal thread): the in-memory services, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from picserve.api.actions import ACTIONS
from picserve.api.app import create_app
from picserve.config import Settings
from picserve.protocol.signature import sign
from picserve.services import Services
from picserve.storage.memory import MemoryStore
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from tests import fuzzing

#: cases per test, by what there is to mutate: GenerateImagesSDXL has by far the most fields; the actions
#: with fields in their baseline request (tests/fuzzing.py) 110 each; an action whose baseline is empty has
#: only the envelope and the body's root to mutate, which 40 cases cover. About 2,000 in all (7 s of one
#: core); bench/fuzz.py sends 100,000 against a real server.
EXAMPLES = {
    action: 700 if action == "GenerateImagesSDXL" else 110 if fuzzing.has_fields(action) else 40 for action in ACTIONS
}
RAW_EXAMPLES = 250

#: reproducible (the same cases every run), nothing written to .hypothesis/, no time limit per case
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@dataclass
class Fuzz:
    runner: asyncio.Runner
    http: httpx.AsyncClient
    public_key: str
    private_key: str
    #: a real task of the key, for ListTasksDetails and CancelTask
    task_uid: str = ""

    def post(self, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
        headers = {} if content_type is None else {"content-type": content_type}
        return self.runner.run(self.http.post("/", content=body, headers=headers))

    def send(self, case: fuzzing.Case) -> None:
        response = self.post(case.body, case.content_type)
        fuzzing.TALLY.codes[fuzzing.check_reply(response.status_code, response.content)] += 1

    def signed(self, action: str, **params: object) -> dict:
        reply = self.post(json.dumps(_signed(action, self.public_key, self.private_key, **params)).encode())
        return reply.json()

    def assert_up(self) -> None:
        assert self.signed("ListModels")["RetCode"] == 0
        assert self.runner.run(self.http.get("/healthz")).status_code == 200


def _signed(action: str, public_key: str, private_key: str, **params: object) -> dict:
    body = {"Action": action, "PublicKey": public_key, **params}
    body["Signature"] = sign(body, private_key)
    return body


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> Iterator[Fuzz]:
    root = tmp_path_factory.mktemp("fuzz")
    # no per-key limits (0 = none), and a queue that never fills: every case reaches validation
    config = Settings(
        data_dir=root / "data",
        models_dir=fuzzing.write_models(root / "models"),
        max_requests_per_minute=0,
        max_open_tasks=0,
        max_queued_tasks=10**9,
    )
    repo = InMemoryRepository(in_memory_app())
    app = create_app(config, Services.build(config, repo=repo, store=MemoryStore(3600)))
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        runner.run(stack.enter_async_context(app.router.lifespan_context(app)))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        try:
            runner.run(_open(repo))
            account = runner.run(repo.create_key("fuzz", 10**15))
            fuzz = Fuzz(runner, http, account.public_key, account.private_key)
            generated = fuzz.signed(
                "GenerateImagesSDXL",
                MainModel={"ModelCode": fuzzing.MODEL},
                Width=64,
                Height=64,
                TranslatePrompts=False,
            )
            fuzz.task_uid = generated["TaskUID"]
            yield fuzz
        finally:
            runner.run(http.aclose())
            runner.run(stack.aclose())


async def _open(repo: InMemoryRepository) -> None:
    await repo.app.open_async()  # binds the in-memory connector to this loop


def _run(fuzz: Fuzz, strategy, examples: int) -> None:
    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=strategy)
    def check(case: fuzzing.Case) -> None:
        fuzz.send(case)

    started = time.perf_counter()
    try:
        check()
    finally:
        fuzzing.TALLY.seconds += time.perf_counter() - started
    fuzz.assert_up()


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_signed_requests_with_hostile_fields(fuzz, action):
    _run(fuzz, fuzzing.signed_cases(action, fuzz.public_key, fuzz.private_key, fuzz.task_uid), EXAMPLES[action])


def test_raw_bodies(fuzz):
    _run(fuzz, fuzzing.raw_cases(fuzz.public_key, fuzz.private_key), RAW_EXAMPLES)

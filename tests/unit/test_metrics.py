"""Prometheus metrics (metrics.py): the API's `/metrics` and a worker's metrics server.

The fast tier's in-process stack (tests/api/conftest.py): the API and the real worker loop on the
in-memory repository, with FakeEngine. The series are process-wide (one registry per kind of
process), so every check reads a delta between two scrapes.
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request

import prometheus_client
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picserve import errors, metrics
from picserve.engine.fake import FakeEngine
from picserve.tasks.memory import InMemoryRepository, in_memory_app
from picserve.translate.prompts import PromptTranslator
from tests import processes
from tests.api.conftest import MODEL, client, models_folder, request, settings, stack  # noqa: F401

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (not yet created)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(stack) -> Samples:  # noqa: F811
    reply = stack.api.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return parse(reply.text)


def worker_samples() -> Samples:
    return parse(metrics.render_worker().decode())


#: the size bucket of the tests' 64×72 single images
SIZE = "0.25MP"


def test_a_task_moves_the_request_queue_and_worker_series(stack, client):  # noqa: F811
    api_before, worker_before = scrape(stack), worker_samples()
    uid = client.generate_images_sdxl(**request())
    queued = scrape(stack)

    assert value(queued, "picserve_queue_depth", model=MODEL) == 1
    assert value(queued, "picserve_keys_by_open_tasks", open="1-9") == 1  # the one key, with its one task
    assert value(queued, "picserve_database_up") == 1
    ok = {"action": "GenerateImagesSDXL", "ret_code": "0"}
    assert value(queued, "picserve_requests_total", **ok) - value(api_before, "picserve_requests_total", **ok) == 1
    latency = "picserve_request_duration_seconds_count"
    assert (
        value(queued, latency, action="GenerateImagesSDXL") - value(api_before, latency, action="GenerateImagesSDXL")
        == 1
    )

    stack.run_worker()
    assert client.list_tasks_details([uid])[0]["Status"] == "Finished"
    done, worker_after = scrape(stack), worker_samples()

    assert value(done, "picserve_queue_depth", model=MODEL) == 0  # a catalog model with nothing queued: 0
    assert value(done, "picserve_keys_by_open_tasks", open="0") == 1
    assert value(done, "picserve_keys_by_open_tasks", open="1-9") == 0

    def moved(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    finished = {"model": MODEL, "size": SIZE, "outcome": "finished"}
    assert moved("picserve_worker_task_duration_seconds_count", **finished) == 1
    assert moved("picserve_worker_task_duration_seconds_sum", **finished) > 0
    # 6 steps in one chunk: the gaps between steps 1…6 are timed, the first step (setup) is not
    assert moved("picserve_worker_step_duration_seconds_count", model=MODEL, size=SIZE) == 5
    # a fresh FakeEngine held nothing before the task: one load of its model, timed
    assert moved("picserve_worker_model_loads_total", model=MODEL) == 1
    assert moved("picserve_worker_model_load_duration_seconds_count", model=MODEL) == 1


def test_a_failing_task_counts_its_error_code(stack, client):  # noqa: F811
    before = worker_samples()
    uid = client.generate_images_sdxl(**request())
    stack.run_worker(FakeEngine(memory_pixels=10))  # the device "runs out of memory" at once
    detail = client.list_tasks_details([uid])[0]
    assert (detail["Status"], detail["ErrorCode"]) == ("Error", errors.OutOfMemory.ret_code)

    after = worker_samples()
    code = str(errors.OutOfMemory.ret_code)
    errors_total = "picserve_worker_task_errors_total"
    assert value(after, errors_total, code=code) - value(before, errors_total, code=code) == 1
    failed = {"model": MODEL, "size": SIZE, "outcome": "failed"}
    count = "picserve_worker_task_duration_seconds_count"
    assert value(after, count, **failed) - value(before, count, **failed) == 1


def test_refused_requests_are_counted_by_retcode_and_foreign_actions_add_no_series(stack, client):  # noqa: F811
    before = scrape(stack)
    unknown = stack.api.post("/", json=client.signed("NoSuchAction-" + "x" * 20)).json()
    assert unknown["RetCode"] == errors.UnknownAction.ret_code
    stack.api.post("/", content=b"not json", headers={"content-type": "application/json"})
    client.call("GetCreditBalance")
    after = scrape(stack)

    def moved(**labels: str) -> float:
        return value(after, "picserve_requests_total", **labels) - value(before, "picserve_requests_total", **labels)

    assert moved(action="unknown", ret_code=str(errors.UnknownAction.ret_code)) == 1
    assert moved(action="unknown", ret_code=str(errors.ParamError.ret_code)) == 1
    assert moved(action="GetCreditBalance", ret_code="0") == 1
    assert not any("NoSuchAction" in str(labels) for _, labels in after)


def test_keys_are_bucketed_by_open_tasks_never_named(stack):  # noqa: F811
    busy = stack.client(name="busy")
    for seed in range(12):
        busy.generate_images_sdxl(**request(Seed=seed))
    idle = stack.client(name="idle")
    revoked = stack.api.portal.call(stack.repo.create_key, "gone", 10)
    stack.api.portal.call(stack.repo.revoke_key, revoked.public_key)  # revoked, nothing open: left out

    samples = scrape(stack)
    assert value(samples, "picserve_keys_by_open_tasks", open="10-99") == 1
    assert value(samples, "picserve_keys_by_open_tasks", open="0") == 1
    assert value(samples, "picserve_queue_depth", model=MODEL) == 12
    text = stack.api.get("/metrics").text
    assert busy.public_key not in text and idle.public_key not in text


def test_open_task_buckets():
    assert [metrics.open_task_bucket(n) for n in (0, 1, 9, 10, 99, 100, 5000)] == [
        "0",
        "1-9",
        "1-9",
        "10-99",
        "10-99",
        "100+",
        "100+",
    ]


def test_translation_cache_hits_and_misses(tmp_path):
    class Upper:
        name = "upper"

        def translate(self, texts: list[str], source: str) -> list[str]:
            return [t.upper() for t in texts]

    translator = PromptTranslator(tmp_path / "no-models")
    translator._factories = {"fr": Upper}  # a translation "model" for French, without loading one
    assert translator._segment("chat", "fr") == "CHAT"  # a miss: sent to the model
    assert translator._segment("chat", "fr") == "CHAT"  # a hit
    assert translator._segment("chien", "fr") == "CHIEN"
    assert translator.cache_stats() == (1, 2)

    import asyncio

    text = asyncio.run(metrics.render_api(InMemoryRepository(in_memory_app()), translator)).decode()
    samples = parse(text)
    assert value(samples, "picserve_translation_cache_hits_total") == 1
    assert value(samples, "picserve_translation_cache_misses_total") == 2


def test_a_database_that_cannot_be_read_leaves_its_series_out():
    class Down(InMemoryRepository):
        async def queued_by_model(self) -> dict[str, int]:
            raise errors.DatabaseUnreachable("database unreachable")

    import asyncio

    samples = parse(asyncio.run(metrics.render_api(Down(in_memory_app()))).decode())
    assert value(samples, "picserve_database_up") == 0
    assert not any(name == "picserve_queue_depth" for name, _ in samples)


def test_size_buckets_are_output_megapixels(stack):  # noqa: F811
    from picserve import domain

    def spec(width: int, height: int, batch: int = 1) -> domain.GenerationSpec:
        return domain.GenerationSpec(model_code=MODEL, prompt="x", width=width, height=height, batch_size=batch)

    assert metrics.size_bucket(spec(512, 512)) == "0.25MP"
    assert metrics.size_bucket(spec(1024, 1024)) == "1MP"
    assert metrics.size_bucket(spec(1216, 832)) == "1MP"
    assert metrics.size_bucket(spec(1024, 1024, 4)) == "4MP"
    assert metrics.size_bucket(spec(2048, 2048, 8)) == "more"


# --- the worker's metrics server ---------------------------------------------------------------------


@pytest.fixture
def free_port() -> int:
    return processes.free_port()


def test_worker_metrics_server_answers_on_loopback(stack, client, free_port):  # noqa: F811
    client.generate_images_sdxl(**request())
    stack.run_worker()
    stop = metrics.serve_worker(free_port, "127.0.0.1", "cpu")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
            assert reply.headers["Content-Type"].startswith("text/plain")
    finally:
        stop()
    samples = parse(body)
    assert (
        value(samples, "picserve_worker_task_duration_seconds_count", model=MODEL, size=SIZE, outcome="finished") >= 1
    )
    # no CUDA here (torch is not even imported by a FakeEngine worker): no GPU series at all
    assert not any(name.startswith("picserve_worker_gpu_memory") for name, _ in samples)
    assert "picserve_requests_total" not in body  # the API's series are the API's
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=2)


def _listening() -> set[tuple[str, int]]:
    """The TCP addresses this process listens on."""
    return {
        (c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN
    }


def test_port_zero_serves_nothing(monkeypatch, free_port):
    # What a real port does, seen the way the port-0 case is checked below: a new listening socket, a thread.
    threads, sockets = set(threading.enumerate()), _listening()
    stop = metrics.serve_worker(free_port, "127.0.0.1", "cpu")
    try:
        assert ("127.0.0.1", free_port) in _listening() - sockets
        assert set(threading.enumerate()) - threads
    finally:
        stop()

    # Port 0 (PICSERVE_WORKER_METRICS_PORT's default): no server is started, nothing listens, no thread runs,
    # and the function it returns has nothing to stop.
    started: list[tuple[object, ...]] = []
    monkeypatch.setattr(prometheus_client, "start_http_server", lambda *args, **kwargs: started.append(args))
    threads, sockets = set(threading.enumerate()), _listening()
    stop = metrics.serve_worker(0, "127.0.0.1", "cpu")
    assert started == []
    assert _listening() - sockets == set()
    assert set(threading.enumerate()) - threads == set()
    assert stop() is None and stop() is None  # stopping nothing, as often as asked, raises nothing


def test_gpu_memory_is_read_from_torch_where_cuda_is_there(monkeypatch, free_port):
    """No GPU in the fast tier: a stand-in for torch's CUDA API shows what the worker reports."""
    import types

    class Properties:
        total_memory = 80 * 2**30

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        current_device=lambda: 0,
        memory_allocated=lambda index: 3 * 2**30 if index == 1 else 0,
        memory_reserved=lambda index: 4 * 2**30 if index == 1 else 0,
        get_device_properties=lambda index: Properties(),
    )

    class Device:
        def __init__(self, name: str) -> None:
            self.type, _, index = name.partition(":")
            self.index = int(index) if index else None

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, device=Device))
    stop = metrics.serve_worker(free_port, "127.0.0.1", "cuda:1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=10) as reply:
            samples = parse(reply.read().decode())
    finally:
        stop()
    gpu = "picserve_worker_gpu_memory_bytes"
    assert value(samples, gpu, device="cuda:1", kind="allocated") == 3 * 2**30
    assert value(samples, gpu, device="cuda:1", kind="reserved") == 4 * 2**30
    assert value(samples, gpu, device="cuda:1", kind="total") == 80 * 2**30

    cuda.is_available = lambda: False  # a CPU-only torch: no GPU series
    assert not any(name == gpu for name, _ in worker_samples())


def test_the_dashboard_and_the_docs_name_only_series_that_exist():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).parents[2]
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"picserve_\w+", e)}
    page = (root / "docs" / "operations.md").read_text()  # the Metrics section, up to the next one
    start = page.index("\n## Metrics\n")
    section = page[start : page.index("\n## ", start + 1)]
    listed = set(re.findall(r"^\| `(picserve_\w+)`(?:, `(picserve_\w+)`)?", section, re.M))
    documented = {name for pair in listed for name in pair if name}
    assert used <= documented, used - documented
    source = Path(metrics.__file__).read_text()
    # a counter is declared without its _total suffix, which the exposition adds
    assert {n for n in documented if f'"{n.removesuffix("_total")}"' not in source} == set()

"""Shared fixtures and tiers.

Tiers, by folder (marks added at collection): `unit/` and `api/` need neither PostgreSQL nor torch
models (the fast tier, `make test-fast`); `contract/` runs each contract on the in-memory
implementation (fast) and on PostgreSQL (`postgres`); `engine/` and `translate/` load models
(`models`); `integration/` and `acceptance/` need both. Fixtures: the tiny SDXL (built once, cached
in pytest's cache), a real PostgreSQL (embedded, or PICSERVE_TEST_DATABASE_URL), and a network
limited to loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.s3_server import s3_endpoint

__all__ = ["s3_endpoint"]  # a fixture of the whole suite, imported to be found here

_TIER_MARKS = {
    "engine": ("models",),
    "translate": ("models",),
    "integration": ("postgres", "models"),
    "acceptance": ("postgres", "models"),
}

_connect = socket.socket.connect


def _loopback_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise RuntimeError(f"test tried to reach {address}: only loopback is allowed")
    return _connect(self, address)


def pytest_configure(config):
    socket.socket.connect = _loopback_only
    # Never reach a model hub, and keep tokenizers from forking thread pools in test processes.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_terminal_summary(terminalreporter):
    # tests/api/test_fuzz.py: how many hostile requests were sent, and how long they took
    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is not None and fuzzing.TALLY.cases:
        terminalreporter.write_line(fuzzing.TALLY.summary())


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow", action="store_true", help="also run the tests marked slow (skipped by default: suite time)"
    )


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    skip_slow = pytest.mark.skip(reason="marked slow: run with --run-slow (kept out of `make test` for its time)")
    for item in items:
        folder = Path(item.fspath).relative_to(root).parts[0]
        for mark in _TIER_MARKS.get(folder, ()):
            item.add_marker(mark)
        if item.get_closest_marker("slow") is not None and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def models_dir(request) -> Path:
    """A models folder holding the tiny SDXL, as a single file and as a diffusers folder."""
    from picserve.engine import tiny
    from picserve.engine import tiny_submodels as subs

    root = Path(request.config.cache.mkdir("picserve-models"))
    tiny.write_model(root)
    tiny.write_model(root, code=tiny.TINY_INPAINT_CODE, inpaint=True)
    builders = {
        **{f"lora/kohya-{i}.safetensors": (subs.write_lora_kohya, root / "lora", f"kohya-{i}", i) for i in range(4)},
        "lora/peft-0.safetensors": (subs.write_lora_peft, root / "lora", "peft-0", 10),
        "lora/sd15-style.safetensors": (subs.write_lora_sd1, root / "lora", "sd15-style"),
        "lora/kohya-trigger.safetensors": (
            subs.write_lora_kohya,
            root / "lora",
            "kohya-trigger",
            5,
            4,
            {"ss_tag_frequency": '{"10_inkstyle": {"inkstyle": 9, "cat": 3}}'},
        ),
        "embedding/emb-a.safetensors": (subs.write_embedding, root / "embedding", "emb-a", 2, 1),
        "embedding/emb-b.safetensors": (subs.write_embedding, root / "embedding", "emb-b", 1, 2),
        "hypernetwork/hyper-a.pt": (subs.write_hypernetwork, root / "hypernetwork", "hyper-a", 3),
    }
    for name, (build, *args) in builders.items():
        if not (root / name).exists():
            build(*args)
    sidecar = {"Name": "Kohya one", "TriggerWordList": ["sidecarword"], "InferenceParams": {"LoraWeight": 0.5}}
    (root / "lora" / "kohya-1.json").write_text(json.dumps(sidecar))
    return root


@pytest.fixture
def report(capsys):
    """`report(message)`: a figure for the CI log (not captured)."""

    def write(message: str) -> None:
        with capsys.disabled():
            print(f"\n{message}")  # noqa: T201 (the figures belong in the CI log)

    return write


@pytest.fixture(scope="session")
def config_cache(request) -> Path:
    return Path(request.config.cache.mkdir("picserve-config"))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """PICSERVE_TEST_DATABASE_URL (a server of your own) or else an embedded PostgreSQL for the session."""
    url = os.environ.get("PICSERVE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from picserve.tasks.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pg")
    yield server.uri
    server.stop()


@pytest.fixture
def database_url(pg_server):
    """A fresh, empty database for one test."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"picserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: the compute dtypes of the fp16 tier: a test marked `dtypes` runs once per dtype it names
DTYPES = ("float32", "float16")


def pytest_generate_tests(metafunc):
    """The fp16 tier: a test marked `@pytest.mark.dtypes("float32", "float16")` (or a module whose
    `pytestmark` is) that uses the `dtype` fixture (the `engine` fixture does) runs once per dtype, the
    tiny engine on the CPU in that dtype (users run fp16 on GPUs; fp16 runs on the CPU too, slowly at
    full size but in about 0.15 s per tiny image)."""
    marker = metafunc.definition.get_closest_marker("dtypes")
    if marker is not None and "dtype" in metafunc.fixturenames:
        names = marker.args or DTYPES
        metafunc.parametrize("dtype", names, indirect=True, ids=[str(n) for n in names])


@pytest.fixture(scope="session")
def dtype(request) -> str:
    """The compute dtype of the engines a test builds: float32 unless the test is in the fp16 tier
    (marked `dtypes`, see pytest_generate_tests)."""
    return getattr(request, "param", "float32")


@pytest.fixture(scope="session")
def engine(models_dir, config_cache, dtype):
    """One CPU engine per dtype for the session, so the tiny pipeline loads once for each."""
    from picserve import catalog
    from picserve.engine.engine import Engine

    return Engine(catalog.Catalog(models_dir), device="cpu", max_loaded=2, cache_dir=config_cache, dtype=dtype)

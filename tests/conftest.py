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
import itertools
import json
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.filelock import locked
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


#: torch's CPU threads per test process (and the picserve processes the tests start, which inherit it)
TORCH_THREADS = "1"


def pytest_configure(config):
    socket.socket.connect = _loopback_only
    # Never reach a model hub, and keep tokenizers from forking thread pools in test processes.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One torch thread: the tiny model's tensors are too small to gain from more, and an OpenMP pool of
    # one thread per core spins at every op while its other threads wait for a core, which other test
    # processes (pytest-xdist's workers, the picserve processes of the acceptance tests, other runs)
    # hold: an engine test took 44 s instead of 1.7 s on 2 shared cores. Set before torch is imported.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, TORCH_THREADS)
    if "torch" in sys.modules:  # imported already (by a plugin): the variables came too late
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:  # what pytest-xdist's workers reported (`report`)
        terminalreporter.section("Figures")
        for figure in _FIGURES:
            terminalreporter.write_line(figure)
    # tests/api/test_fuzz.py: how many hostile requests were sent, and how long they took (in this
    # process, plus what pytest-xdist's workers sent: pytest_testnodedown)
    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is not None and fuzzing.TALLY.cases:
        terminalreporter.write_line(fuzzing.TALLY.summary())


def pytest_sessionfinish(session):
    # a pytest-xdist worker hands its fuzz tally to the controller
    fuzzing = sys.modules.get("tests.fuzzing")
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and fuzzing is not None and fuzzing.TALLY.cases:
        workeroutput["fuzz_tally"] = {"codes": dict(fuzzing.TALLY.codes), "seconds": fuzzing.TALLY.seconds}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: add a finished worker's fuzz tally to this process's."""
    tally = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if tally:
        from tests import fuzzing

        fuzzing.TALLY.codes.update({int(code): count for code, count in tally["codes"].items()})
        fuzzing.TALLY.seconds += tally["seconds"]


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow", action="store_true", help="also run the tests marked slow (skipped by default: suite time)"
    )


#: an identifier of a `-m` expression (pytest's grammar)
_MARK_IDENT = re.compile(r"(?:\w|:|\+|-|\.|\[|\]|\\|/)+")


class _Undecidable(Exception):
    """A `-m` expression with mark keyword arguments: whether it selects a folder is not decided here."""


def _deselects_every_test(markexpr: str, marks: set[str]) -> bool:
    """Whether `-m markexpr` deselects every test that carries `marks`, whatever other marks it has."""
    from _pytest.mark.expression import Expression

    others = sorted({name for name in _MARK_IDENT.findall(markexpr) if name not in ("and", "or", "not")} - marks)
    if len(others) > 8:
        return False
    compiled = Expression.compile(markexpr)
    for values in itertools.product((False, True), repeat=len(others)):
        present = marks | {name for name, value in zip(others, values, strict=True) if value}

        def matcher(name: str, /, **kwargs: object) -> bool:
            if kwargs:
                raise _Undecidable
            return name in present  # noqa: B023 (evaluated before the next assignment)

        try:
            if compiled.evaluate(matcher):
                return False
        except _Undecidable:
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A tier's folder that `-m` deselects entirely (`make test-fast`'s `not postgres and not models`:
    engine/, translate/, integration/, acceptance/) is not even imported: importing it (torch, diffusers)
    was most of the fast tier's collection time."""
    markexpr = config.getoption("markexpr", "") or ""
    if not markexpr:
        return None
    try:
        parts = collection_path.relative_to(Path(__file__).parent).parts
    except ValueError:
        return None
    if len(parts) != 1 or parts[0] not in _TIER_MARKS:
        return None
    try:
        return True if _deselects_every_test(markexpr, set(_TIER_MARKS[parts[0]])) else None
    except Exception:  # a bad expression: pytest reports it itself when it deselects
        return None


#: The test files that take longest, longest first (seconds on the 2-core development machine, 2026-12-07).
#: pytest-xdist hands out whole files (`--dist loadfile`), in collection order (the Makefile turns off its
#: reordering by test count, which put these one-test files last): a long file handed out last kept one
#: worker busy for minutes after the other had finished. So they go first, then the rest tier by tier,
#: the heaviest tiers first, and the small files of the light tiers fill the gaps at the end. The order
#: changes nothing but the suite's wall time; a file missing here only runs later.
LONGEST_FIRST = (
    "engine/test_lycoris.py",  # 148 s
    "engine/test_acceleration.py",  # 132 s, 51 s of it the compile warm-up
    "acceptance/test_fleet.py",  # about 90 s (two phases of a 2-API, 3-worker fleet)
    "engine/test_engine.py",  # 103 s
    "integration/test_queue.py",  # about 100 s
    "engine/test_modes.py",  # 99 s
    "engine/test_model_cache.py",  # 99 s
    "acceptance/test_serve.py",  # about 80 s
    "playground/test_playground.py",  # 78 s
    "playground/test_tools.py",  # about 60 s (its own server; real upscales and cut-outs)
    "playground/test_toolkit.py",  # about 70 s (its own server; faces, clicks, descriptions, backgrounds)
    "playground/test_controlnet.py",  # about 30 s (its own server; guided generations)
    "engine/test_adapters.py",  # 77 s
    "integration/test_db_outage.py",  # 74 s
    "acceptance/test_webhooks.py",  # 62 s
    "engine/test_model_files.py",  # 54 s
    "engine/test_fp16.py",  # 53 s
    "engine/test_failures.py",  # 50 s
    "acceptance/test_readme.py",  # about 160 s (the tools, ControlNet and edits examples too)
    "acceptance/test_toolkit_chain.py",  # about 35 s (its own server; faces, SAM, captions, a background)
    "engine/test_hires.py",  # about 45 s
    "engine/test_controlnet.py",  # about 35 s
    "engine/test_masked_edit.py",  # about 35 s
    "playground/test_edit.py",  # about 27 s (its own server)
    "engine/test_tool_tasks.py",  # about 20 s
    "engine/test_memory.py",  # 47 s
    "engine/test_erase.py",  # about 16 s (a full-size LaMa)
    "engine/test_ipadapter.py",  # about 15 s
    "engine/test_preprocess.py",  # about 12 s
    "integration/test_run_state_machine.py",  # 32 s
    "acceptance/test_poison.py",  # 28 s
    "acceptance/test_openai.py",
    "engine/test_bench_gpu_check.py",  # 18 s
    # the fast tier's longest (`make test-fast` runs only these tiers)
    "api/test_fuzz.py",  # 10 s
    "api/test_bodies.py",  # 6 s
    "api/test_run_protocol.py",
    "api/test_openai.py",
    "api/test_cli.py",
)
#: then the other files, by tier, heaviest first
_TIER_ORDER = ("acceptance", "engine", "integration", "playground", "translate", "api", "contract", "unit")


def _schedule_key(root: Path) -> Callable[[pytest.Item], tuple[int, int]]:
    longest = {name: rank for rank, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> tuple[int, int]:
        relative = Path(item.fspath).relative_to(root)
        if relative.as_posix() in longest:
            return (0, longest[relative.as_posix()])
        tier = relative.parts[0]
        return (1, _TIER_ORDER.index(tier) if tier in _TIER_ORDER else len(_TIER_ORDER))

    return key


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    skip_slow = pytest.mark.skip(reason="marked slow: run with --run-slow (kept out of `make test` for its time)")
    for item in items:
        folder = Path(item.fspath).relative_to(root).parts[0]
        for mark in _TIER_MARKS.get(folder, ()):
            item.add_marker(mark)
        if item.get_closest_marker("slow") is not None and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
    items.sort(key=_schedule_key(root))  # stable: a file's tests keep their order


#: written last into the models folder of the cache: everything before it is complete
_MODELS_COMPLETE = ".complete"


@pytest.fixture(scope="session")
def models_dir(request) -> Path:
    """A models folder holding the tiny SDXL, as a single file and as a diffusers folder (and tiny LoRAs,
    embeddings and a hypernetwork), built once into pytest's cache and reused by later runs.

    Safe with parallel workers (pytest-xdist) and concurrent runs: built under a file lock into a staging
    folder of this process, marked complete, and only then renamed into place, so the folder is either
    absent or complete (a run killed while building leaves only its staging folder, removed by the next).
    The image tools' and control models are added to it afterwards, each file only when missing."""
    base = Path(request.config.cache.mkdir("picserve-test-models"))
    root = base / "models"
    with locked(base / "models.lock"):
        if not (root / _MODELS_COMPLETE).exists():
            for stale in [root, *base.glob("building-*")]:  # a killed run's staging (none builds now: the lock)
                _clear(stale)
            staging = base / f"building-{os.getpid()}"
            staging.mkdir()
            try:
                _build_models(staging)
                (staging / _MODELS_COMPLETE).write_text("")
                staging.rename(root)
            finally:
                _clear(staging)
        _add_tool_models(root)  # a cache built before the image tools gets them too
        _add_control_models(root)
        _add_toolkit_models(root)
    return root


def _clear(path: Path) -> None:
    """Remove the folder `path` if it is there; what could not be removed is named, with why."""
    if not path.exists():
        return
    failures: list[str] = []
    shutil.rmtree(path, onerror=lambda _function, name, info: failures.append(f"{name}: {info[1]}"))
    if path.exists():
        raise RuntimeError(f"cannot remove the test models folder {path}: {'; '.join(failures[:5]) or 'unknown'}")


def _build_models(root: Path) -> None:
    from picserve.engine import tiny
    from picserve.engine import tiny_submodels as subs

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


def _add_tool_models(root: Path) -> None:
    """ResizeImage's, RemoveBackground's and RemoveContents' models: a tiny Real-ESRGAN Compact ×4, a tiny
    ONNX segmenter and a random LaMa (LaMa has one size: 100 MB, written once per cache)."""
    upscaler, segmenter = root / "upscale" / "4x-tiny-compact.pth", root / "background" / "u2net-tiny.onnx"
    eraser = root / "inpaint" / "lama-tiny-random.safetensors"
    if not (upscaler.exists() and segmenter.exists()):
        from tests.engine.onnx_files import write_tiny_segmenter
        from tests.engine.upscale_files import write_compact

        write_compact(upscaler)
        write_tiny_segmenter(segmenter)
    if not eraser.exists():
        from tests.engine.lama_files import write_lama

        write_lama(eraser)


def _add_toolkit_models(root: Path) -> None:
    """RestoreFaces', ExtractContents' and DescribeImages' models: a tiny RestoreFormer and a tiny YuNet-format
    detector (of magenta squares: tests/engine/face_files.py), a tiny SAM, a tiny BLIP captioner (the
    default) and a tiny WD-style tagger."""
    from tests.engine.caption_files import write_tiny_blip, write_tiny_tagger
    from tests.engine.face_files import write_tiny_restoreformer, write_tiny_yunet
    from tests.engine.sam_files import write_tiny_sam

    builders = {
        "faces/restoreformer-tiny.pth": write_tiny_restoreformer,
        "facedetect/yunet-tiny.onnx": write_tiny_yunet,
        "segment/sam-tiny": write_tiny_sam,
        "caption/blip-tiny": write_tiny_blip,
        "caption/wd-tagger-tiny": write_tiny_tagger,
    }
    for name, write in builders.items():
        if not (root / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            staging = root / f"{name}.building"  # a folder model appears whole, or not at all
            shutil.rmtree(staging, ignore_errors=True)
            staging.unlink(missing_ok=True)
            write(staging)
            staging.rename(root / name)
    (root / "caption" / "blip-tiny.json").write_text(json.dumps({"Default": True}))


def _add_control_models(root: Path) -> None:
    """Tiny ControlNets fitted to the tiny SDXL (and one of SD1's width), tiny IP-Adapters and their image
    encoder: tests/engine/controlnet_files.py."""
    from tests.engine.controlnet_files import CONTROL_MODELS, IP_ADAPTERS, add_control_models

    names = [f"controlnet/{name}" for name in CONTROL_MODELS] + [f"ipadapter/{name}" for name in IP_ADAPTERS]
    names.append("ipadapter/tiny-ip-adapter.json")
    if all((root / name).exists() for name in names):
        return
    add_control_models(root)


@pytest.fixture
def report(request, capsys):
    """`report(message)`: a figure for the CI log (not captured). Under pytest-xdist, whose workers' output
    is not shown, the worker hands it to the controller, which prints it at the end (`Figures`)."""

    def write(message: str) -> None:
        if hasattr(request.config, "workerinput"):
            request.node.user_properties.append((_FIGURE, message))
            return
        with capsys.disabled():
            print(f"\n{message}")  # noqa: T201 (the figures belong in the CI log)

    return write


#: the user property under which a pytest-xdist worker hands a `report` figure to the controller
_FIGURE = "picserve-figure"
#: the figures the controller received, printed in its terminal summary
_FIGURES: list[str] = []


def pytest_runtest_logreport(report):
    # pytest-xdist's controller: the figures its workers reported (none without xdist: printed at once)
    if report.when == "call":
        _FIGURES.extend(value for name, value in report.user_properties if name == _FIGURE)


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

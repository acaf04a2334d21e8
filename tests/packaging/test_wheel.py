"""The built wheel is complete: it holds every file of the package, and installed away from the checkout it
runs `picserve serve`, generates an image, and serves the playground and the offline API docs.

The wheel is built with pip from a fresh copy of the checkout (its top-level files and src/, without
caches, an old `build/` or the editable install's `src/picserve.egg-info`): setuptools reuses a `build/lib`
left in the tree, and adds the files an old egg-info's SOURCES.txt lists (include-package-data), so an
in-tree build can still ship a data file that pyproject.toml's package-data no longer names; a clean
clone's wheel would lack it. The build is isolated (pip installs pyproject.toml's `build-system.requires`
into a throwaway environment, from the index, as `make install`'s editable install does): .venv's own
setuptools is whatever its Python's venv brought (none at all from Python 3.12, an older one than the
`setuptools>=77` it needs from 3.11's), which the lock does not pin.

The wheel goes into a new virtual environment in a temporary folder. Its dependencies (torch and the
rest: minutes and gigabytes to install afresh) come from the running interpreter's environment through a
`.pth` file naming that site-packages folder: a path line in a `.pth` does not process the `.pth` files
inside the folder it names, so the editable install's (`__editable__.picserve-*.pth`, which puts the
checkout's src/ on sys.path) is not applied there. The tests check that it is not: `picserve` is imported
from the new environment, and its distribution is the wheel's. Every command runs from a temporary folder
outside the checkout, without PYTHONPATH, and with no PATH entry inside the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tests.processes import QUIET, create_key, picserve, running, serve

#: the checkout: this file is tests/packaging/test_wheel.py
ROOT = Path(__file__).resolve().parents[2]
#: what the build never copies nor the wheel holds
_NOT_PACKAGED = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info")
#: files the code reads at run time (found by grepping src/picserve for `Path(__file__)`, `resources.files`):
#: named here as well, so that the file-by-file comparison cannot pass on an empty or misplaced tree
READ_AT_RUN_TIME = (
    "picserve/py.typed",
    "picserve/engine/clip_bpe_simple_vocab_16e6.txt.gz",  # engine/sdxl_base.py: the CLIP BPE merges
    "picserve/tasks/sql/migrations/0001_initial.sql",  # tasks/migrations.py: resources.files("picserve.tasks")
    "picserve/playground/static/index.html",  # playground/__init__.py: STATIC_DIR
    "picserve/playground/static/app.js",
)


def _outside_checkout(path: Path) -> Path:
    assert not path.resolve().is_relative_to(ROOT), f"{path} lies inside the checkout {ROOT}: use --basetemp elsewhere"
    return path


@dataclass(frozen=True)
class Installed:
    """The wheel installed in a new virtual environment `venv`."""

    wheel: Path
    venv: Path
    #: where the commands run: a temporary folder outside the checkout
    cwd: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def picserve(self) -> Path:
        """The console script pip wrote from the wheel's entry point."""
        return self.venv / "bin" / "picserve"

    def run(self, *command: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(map(str, command)),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _copy_checkout(dest: Path) -> None:
    """What a build reads from the checkout: its top-level files and src/, without caches and old builds."""
    dest.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, dest / entry.name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns(*_NOT_PACKAGED))


@dataclass(frozen=True)
class Build:
    """The wheel pip built, and the copy of src/picserve it was built from (the checkout may change meanwhile)."""

    wheel: Path
    package: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Build:
    """The wheel pip builds from a copy of the checkout."""
    work = _outside_checkout(tmp_path_factory.mktemp("wheel"))
    source, out = work / "source", work / "dist"
    _copy_checkout(source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", out, source],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, f"pip wheel exited with {built.returncode}:\n{built.stdout}\n{built.stderr}"
    (found,) = out.glob("picserve-*.whl")
    return Build(wheel=found, package=source / "src" / "picserve")


def _environment(venv: Path) -> dict[str, str]:
    """This process's environment (log level `warning`) as the new environment's commands get it: no
    PYTHONPATH or PYTHONHOME, no user site, no PATH entry inside the checkout (an activated .venv's bin)."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry and not _inside_checkout(entry)]
    env.update(QUIET, PATH=os.pathsep.join(path), PYTHONNOUSERSITE="1", VIRTUAL_ENV=str(venv))
    return env


def _inside_checkout(entry: str) -> bool:
    return Path(entry).resolve().is_relative_to(ROOT)


@pytest.fixture(scope="module")
def installed(build, tmp_path_factory) -> Installed:
    """The wheel in a new virtual environment whose other packages come from this one's site-packages."""
    work = _outside_checkout(tmp_path_factory.mktemp("installed"))
    venv, cwd = work / "venv", work / "cwd"
    cwd.mkdir()
    # no pip of its own (ensurepip: about 6 s on 2 cores): this pip installs into it (`--python`)
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", venv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    env = _environment(venv)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    added = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", str(build.wheel)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert added.returncode == 0, f"pip install exited with {added.returncode}:\n{added.stdout}\n{added.stderr}"
    site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))  # this environment's
    (Path(site) / "_picserve_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return Installed(wheel=build.wheel, venv=venv, cwd=cwd, env=env)


def _files(path: Path) -> set[str]:
    """The package's files under `path`, as the wheel names them (picserve/...), caches aside."""
    return {
        f"picserve/{file.relative_to(path).as_posix()}"
        for file in path.rglob("*")
        if file.is_file() and "__pycache__" not in file.parts and file.suffix not in (".pyc", ".pyo")
    }


def test_wheel_holds_every_file_of_the_package(build):
    with zipfile.ZipFile(build.wheel) as archive:
        names = set(archive.namelist())
        record = archive.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    source = _files(build.package)
    assert set(READ_AT_RUN_TIME) <= source, "a file the code reads is gone from src/picserve: update this test"
    data = {name for name in source if not name.endswith(".py")}
    missing_data = sorted(data - names)
    assert not missing_data, (
        f"files of src/picserve missing from the wheel (pyproject.toml's [tool.setuptools.package-data]): "
        f"{missing_data}"
    )
    missing_code = sorted(source - data - names)
    assert not missing_code, f"modules of src/picserve missing from the wheel (a package not found?): {missing_code}"
    packaged = {name for name in names if name.startswith("picserve/")}
    assert not {name for name in packaged if "__pycache__" in name or name.endswith((".pyc", ".pyo"))}
    assert re.search(r"^picserve\s*=\s*picserve\.cli:main$", entry_points, re.M), entry_points
    assert {line.split(",")[0] for line in record.splitlines()} == names


def test_installed_wheel_is_the_one_imported(installed):
    probe = """
import importlib.metadata, importlib.resources, json, sys
import picserve, picserve.playground
found = importlib.metadata.distribution("picserve")
print(json.dumps({
    "file": picserve.__file__,
    "dist": str(found.locate_file("")),
    "version": found.version,
    "direct_url": found.read_text("direct_url.json"),
    "migrations": str(importlib.resources.files("picserve.tasks") / "sql" / "migrations"),
    "static": str(picserve.playground.STATIC_DIR),
    "path": sys.path,
    "finders": [type(finder).__module__ + "." + type(finder).__qualname__ for finder in sys.meta_path],
}))
"""
    probed = installed.run(installed.python, "-c", probe)
    assert probed.returncode == 0, probed.stderr
    seen = json.loads(probed.stdout)
    venv, src = installed.venv.resolve(), (ROOT / "src").resolve()
    for key in ("file", "dist", "migrations", "static"):
        path = Path(seen[key]).resolve()
        assert path.is_relative_to(venv) and not path.is_relative_to(src), f"{key}: {seen[key]} (not the wheel's)"
    # the editable install's .pth (src/ on sys.path) was not applied
    assert not [entry for entry in seen["path"] if entry and Path(entry).resolve().is_relative_to(src)], seen["path"]
    assert not [finder for finder in seen["finders"] if "editable" in finder.lower()], seen["finders"]
    # the distribution is the one pip installed from this wheel (PEP 610's record of where it came from)
    direct = json.loads(seen["direct_url"])
    assert direct["url"].endswith("/" + installed.wheel.name) and "dir_info" not in direct, direct
    assert direct["archive_info"]["hashes"]["sha256"] == hashlib.sha256(installed.wheel.read_bytes()).hexdigest()
    assert seen["version"] == installed.wheel.name.split("-")[1]

    helped = installed.run(installed.picserve, "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "worker", "keys", "generate", "demo"):
        assert re.search(rf"^\W*{command}\s", helped.stdout, re.M), helped.stdout  # a row of its commands


@pytest.mark.postgres
@pytest.mark.models
def test_installed_wheel_serves_generates_and_shows_its_pages(installed, models_dir, monkeypatch):
    monkeypatch.chdir(installed.cwd)  # the helpers' processes start here, outside the checkout
    data_dir, out = installed.cwd / "data", installed.cwd / "out"
    server = serve(
        "--data-dir",
        data_dir,
        "--models-dir",
        models_dir,
        "--device",
        "cpu",
        log=installed.cwd / "serve.log",
        env=installed.env,
        executable=installed.picserve,
    )
    base = server.base
    with running(server):
        # serve's worker runs the wheel's interpreter too (sys.executable -m picserve worker)
        workers = [p for p in psutil.Process(server.pid).children(recursive=True) if "worker" in p.cmdline()]
        assert workers and all(Path(p.cmdline()[0]) == installed.python for p in workers), [
            p.cmdline() for p in workers
        ]
        key = create_key(name="wheel", data_dir=data_dir, env=installed.env, executable=installed.picserve)

        # one image through the wheel's own CLI and SDK (signed PICPIK requests)
        made = picserve(
            "generate",
            "a red fox",
            "--url",
            base,
            "--public-key",
            key["PublicKey"],
            "--private-key",
            key["PrivateKey"],
            "--model",
            "picserve-tiny",
            "--width",
            80,
            "--height",
            64,
            "--steps",
            6,
            "--seed",
            11,
            "--out",
            out,
            env=installed.env,
            executable=installed.picserve,
        )
        assert made.returncode == 0, f"{made.stderr}\n{server.describe()}"
        ((path, seed),) = re.findall(r"^(\S+\.png)\s+seed=(\d+)$", made.stdout, re.M)
        image = Image.open(path)
        assert seed == "11" and image.format == "PNG" and image.size == (80, 64)
        assert "Seed: 11" in image.info["parameters"], image.info  # its text chunk

        with httpx.Client(base_url=base, timeout=30) as http:
            # the playground: its page and every module the app imports (files of the wheel)
            page = http.get("/playground", follow_redirects=True)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page
            assert '<script type="module" src="app.js">' in page.text
            app = http.get("/playground/app.js")
            assert app.status_code == 200 and app.headers["content-type"].startswith("text/javascript"), app
            modules = re.findall(r'^import .* from "\./([\w.-]+\.js)";$', app.text, re.M)
            assert modules, app.text[:500]
            for module in modules:
                assert http.get(f"/playground/{module}").status_code == 200, module
            assert http.get("/playground/style.css").status_code == 200

            # the API docs, whose scripts and styles are served from the installed packages (no CDN)
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger-ui" in docs.text, docs
            assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
            assert any(asset.endswith(".js") for asset in assets), docs.text
            for asset in assets:
                assert asset.startswith("/docs/assets/"), f"/docs loads {asset} from elsewhere"
                assert http.get(asset).status_code == 200, asset
            spec = http.get("/openapi.json")
            assert spec.status_code == 200 and spec.json()["openapi"].startswith("3."), spec
            assert "/" in spec.json()["paths"]
    assert server.stop() == 0, server.describe()

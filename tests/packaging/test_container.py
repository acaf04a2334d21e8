"""The container image (Dockerfile) and compose.yaml, built and run as an operator would: with podman.

- compose.yaml: its structure (PostgreSQL, the API on it, a GPU worker with its NVIDIA device reservation,
  MinIO as an optional profile, named volumes for the models and results, a comment on every environment
  variable), and Docker Compose's own validation of it (`docker-compose config`: Debian's 1.29, which checks
  the file against the Compose schema).
- The image: built with podman from the checkout, its layers cached by podman between runs (the first
  build on a machine is the cold one; its time, a rebuild's and the image's size are reported), rebuilt at
  once from the cache, and rebuilt after a source change reusing the dependency layers.
- `serve` in one container (API, worker and the embedded PostgreSQL in /data), the test's models folder at
  /models: a key made with the image's own `picserve keys create`, an image generated through the SDK from
  outside the container, then the container restarted: the key still signs, the result is still served.
- An API container (`serve --workers 0`) and a worker container from the same image on a PostgreSQL of the
  host's (Debian's, tests/pg_server.py), sharing a results folder as compose.yaml's volumes do: an image
  generated through the SDK, by that worker.

No container registry is reachable here, so the base image is made locally, once: debootstrap's minbase
bookworm (what debian:bookworm-slim is made from) imported into podman, passed as the Dockerfile's
BASE_IMAGE. Inside the build pip reaches the package index through this machine's pip configuration
(`pip config list`): its CA bundle, its local wheel folders and indexes, lent to the build read-only with
`podman build -v` (`podman build --env` does not reach RUN steps), so that pip finds the local CPU torch.

Needs root, podman (runs containers with runc, host networking) and debootstrap; a missing one skips the
tests on a developer machine and fails them under CI=true (tests/needs.py). `.ci/run` installs them, with
docker-compose, and writes the /etc/containers/containers.conf podman needs here. Containers are removed at
the end of each test, failed or not; the images stay (the layer cache of the next run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # (no stubs in the lock)
from PIL import Image

from picserve.sdk import Client
from tests import pg_server
from tests.filelock import locked
from tests.needs import need
from tests.processes import free_port, wait_for

#: the checkout: this file is tests/packaging/test_container.py
ROOT = Path(__file__).resolve().parents[2]
#: the image the tests build (a local name: nothing is pushed)
IMAGE = "localhost/picserve:test"
#: the local stand-in for debian:bookworm-slim: debootstrap's minbase bookworm, imported once
BASE_IMAGE = "localhost/picserve-test-debian:bookworm"
DEBIAN_MIRROR = os.environ.get("PICSERVE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: where the build's pip finds torch when no local folder of this machine's pip holds the pinned wheel
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
#: the label of every container these tests start (removed at the end of the module, whatever happened)
LABEL = "picserve.test=test_container"
#: the model every generation here uses: the tiny random SDXL of tests/conftest.py's models folder
MODEL = "picserve-tiny"

pytestmark = pytest.mark.timeout(2400)  # the first build downloads and installs every package: minutes


# ---------------------------------------------------------------------------------------------- commands


def _run(
    command: Sequence[str | Path], timeout: float = 600, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """`command` to its end, its stdout and stderr kept (together with `stderr=subprocess.STDOUT`)."""
    kwargs.setdefault("stderr", subprocess.PIPE)
    result = subprocess.run(
        [str(part) for part in command], stdout=subprocess.PIPE, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{(result.stderr or '')[-4000:]}"
        )
    return result


def podman(*args: str | Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["podman", *args], timeout=timeout, check=check)


def _missing_tools() -> str | None:
    """Why the image cannot be built and run here, in words, or None."""
    if sys.platform != "linux":
        return "the container tests run on Linux only"
    if os.geteuid() != 0:
        return "needs root: podman runs as root here (.ci/run runs as root), and debootstrap needs it"
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return (
            f"needs {' and '.join(missing)} (Debian's packages podman, runc, debootstrap): not on PATH; "
            ".ci/run installs them where apt is usable"
        )
    return None


# ------------------------------------------------------------------------------------------ the base image


def _make_base_image(work: Path) -> float:
    """debootstrap's minbase bookworm (Debian's python3 is 3.11), with the sources debian:bookworm-slim has,
    imported into podman as BASE_IMAGE; returns the seconds it took."""
    started = time.monotonic()
    rootfs = work / "rootfs"
    try:
        made = _run(
            ["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR],
            timeout=1200,
            check=False,
            stderr=subprocess.STDOUT,
        )
        if made.returncode != 0:
            need(f"debootstrap could not make a Debian bookworm root from {DEBIAN_MIRROR}: {made.stdout[-1500:]}")
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} bookworm main\n"
            f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
            "deb http://deb.debian.org/debian-security bookworm-security main\n"
        )
        for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
            leftover.unlink()
        tarball = work / "rootfs.tar"
        _run(["tar", "-C", rootfs, "-cf", tarball, "."], timeout=600)
        podman("import", "--change", 'CMD ["bash"]', tarball, BASE_IMAGE, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - started


# ----------------------------------------------------------------------------------- pip inside the build


def _pip_config() -> dict[str, str]:
    """This machine's pip configuration (`pip config list`): the environment's PIP_* over the files."""
    listed = _run([sys.executable, "-m", "pip", "config", "list"], timeout=60, check=False).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.match(r"^(?P<where>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'$", line.strip())
        if match:
            (env if match["where"] == ":env:" else files)[match["key"]] = match["value"]
    return {**files, **env}


def _local_folder(location: str) -> Path | None:
    path = Path(location.removeprefix("file://")) if location.startswith(("file://", "/")) else None
    return path if path is not None and path.is_dir() else None


@dataclass(frozen=True)
class PipLoan:
    """What the build borrows from this machine for pip: `podman build -v` mounts and the torch index."""

    volumes: tuple[str, ...]
    torch_index_url: str


def _pip_loan(work: Path, torch_version: str) -> PipLoan:
    """A pip.conf for the build (at /etc/pip.conf, which pip reads) with this machine's CA bundle, local
    wheel folders and indexes, each lent read-only at its own path. Torch comes from PyPI when a local
    folder holds the pinned wheel (a local +cpu build wins over PyPI's), else from PyTorch's CPU index;
    PICSERVE_TEST_TORCH_INDEX_URL chooses otherwise."""
    config = _pip_config()
    lines = ["[global]"]
    volumes: list[str] = []
    lent: set[Path] = set()

    def lend(folder: Path) -> None:
        if folder not in lent:
            lent.add(folder)
            volumes.append(f"{folder}:{folder}:ro")

    if config.get("cert") and Path(config["cert"]).is_file():
        volumes.append(f"{config['cert']}:/run/picserve-build/ca.crt:ro")
        lines.append("cert = /run/picserve-build/ca.crt")
    local_wheels = False
    for key in ("index-url", "extra-index-url", "find-links"):
        entries = config.get(key, "").split()
        for entry in entries:
            folder = _local_folder(entry)
            if folder is not None:
                # a local index's pages link their files relatively, next to its `simple/` (../../files/…)
                lend(folder.parent if key != "find-links" and folder.name == "simple" else folder)
                if key == "find-links" and any(folder.glob(f"torch-{torch_version}*.whl")):
                    local_wheels = True
        if entries:
            lines.append(f"{key} = {' '.join(entries)}")
    if config.get("default-timeout"):
        lines.append(f"default-timeout = {config['default-timeout']}")
    pip_conf = work / "pip.conf"
    pip_conf.write_text("\n".join(lines) + "\n")
    volumes.append(f"{pip_conf}:/etc/pip.conf:ro")
    torch_index = os.environ.get("PICSERVE_TEST_TORCH_INDEX_URL", "" if local_wheels else CPU_TORCH_INDEX)
    return PipLoan(tuple(volumes), torch_index)


# ----------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Build:
    """One `podman build`: its seconds, its steps (instruction, from the cache or not) and its output."""

    seconds: float
    steps: tuple[tuple[str, bool], ...]
    log: str

    def step(self, fragment: str) -> tuple[str, bool]:
        found = [step for step in self.steps if fragment in step[0]]
        assert len(found) == 1, f"{len(found)} build steps contain {fragment!r}:\n{self.log[-3000:]}"
        return found[0]

    def cached(self, fragment: str) -> bool:
        return self.step(fragment)[1]

    @property
    def summary(self) -> str:
        return f"{self.seconds:.0f} s, {sum(cached for _, cached in self.steps)} of {len(self.steps)} steps from cache"


def _parse_steps(log: str) -> tuple[tuple[str, bool], ...]:
    """The build's steps from buildah's output: `[1/3] STEP 2/5: RUN …`, then `--> Using cache …` when the
    step's layer came from the cache."""
    steps: list[list[Any]] = []
    for line in log.splitlines():
        match = re.match(r"^\[\d+/\d+\] STEP \d+/\d+: (.*)$", line)
        if match:
            steps.append([match[1], False])
        elif line.startswith("--> Using cache") and steps:
            steps[-1][1] = True
    # a stage's FROM makes no layer of its own
    return tuple((instruction, cached) for instruction, cached in steps if not instruction.startswith("FROM "))


def _build(context: Path, tag: str, loan: PipLoan, log: Path) -> Build:
    started = time.monotonic()
    command: list[str | Path] = [
        "build",
        "--network",
        "host",
        # the Docker image format keeps HEALTHCHECK (the OCI format has no place for it)
        "--format",
        "docker",
        "--layers",
        "--pull=never",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        f"TORCH_INDEX_URL={loan.torch_index_url}",
        *[part for volume in loan.volumes for part in ("-v", volume)],
        "-t",
        tag,
        "-f",
        context / "Dockerfile",
        context,
    ]
    result = _run(["podman", *command], timeout=3000, check=False, stderr=subprocess.STDOUT)
    log.write_text(result.stdout)
    assert result.returncode == 0, f"podman build exited {result.returncode} (log: {log}):\n{result.stdout[-6000:]}"
    return Build(time.monotonic() - started, _parse_steps(result.stdout), result.stdout)


@dataclass(frozen=True)
class BuiltImage:
    name: str
    #: the account the image runs as (its USER), which the folders lent to it must be writable by
    uid: int
    size: int
    first: Build
    loan: PipLoan
    base_seconds: float | None


def _torch_version() -> str:
    pins = re.findall(r"^torch==(\S+)$", (ROOT / "requirements.lock").read_text(), flags=re.MULTILINE)
    assert pins, "requirements.lock pins no torch"
    return str(pins[0])


def _prune(title: str) -> None:
    """Remove the untagged images (with their unshared layers) of one stage of the Dockerfile, which labels
    each stage's images with its title."""
    podman("image", "prune", "--force", "--filter", f"label=org.opencontainers.image.title={title}", check=False)


def _image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """The image, built from the checkout (the layer cache of earlier runs reused); removes this module's
    containers at the end, whatever happened."""
    need(_missing_tools())
    cache = Path(request.config.cache.mkdir("picserve-container"))
    base_seconds = None
    with locked(cache / "base-image.lock"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            base_seconds = _make_base_image(tmp_path_factory.mktemp("debootstrap"))
    smoke = podman("run", "--rm", "--network", "host", BASE_IMAGE, "true", timeout=120, check=False)
    if smoke.returncode != 0:
        need(
            f"podman cannot start a container here: {smoke.stderr.strip()[-800:]} (as root, podman needs runc and "
            "an /etc/containers/containers.conf with `default_ulimits = []` under [containers] and "
            '`runtime = "runc"` under [engine]: .ci/run writes it)'
        )
    work = tmp_path_factory.mktemp("build")
    loan = _pip_loan(work, _torch_version())
    try:
        # earlier runs' wheel stages (untagged: the source-change build's, and the first build's of an older
        # source); this run's first build makes its own again (seconds), which the rebuild below reuses
        _prune("picserve-wheel")
        first = _build(ROOT, IMAGE, loan, work / "build.log")
        _prune("picserve")  # the image this build replaced, if any, with the layers only it used
        uid = int(podman("run", "--rm", "--network", "host", "--entrypoint", "id", IMAGE, "-u").stdout.strip())
        yield BuiltImage(IMAGE, uid, _image_size(IMAGE), first, loan, base_seconds)
    finally:
        left = podman("ps", "--all", "--quiet", "--filter", f"label={LABEL}", check=False).stdout.split()
        if left:
            podman("rm", "--force", "--time", "5", *left, check=False)


# --------------------------------------------------------------------------------------------- containers


@dataclass
class Container:
    name: str

    def logs(self, lines: int = 60) -> str:
        result = podman("logs", "--tail", str(lines), self.name, check=False, timeout=60)
        return (result.stdout + result.stderr)[-6000:]

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False, timeout=60)
        return state.stdout.strip() == "true"

    def exec(self, *command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = podman("exec", self.name, *command, timeout=timeout, check=False)
        assert result.returncode == 0, (
            f"podman exec {self.name} {' '.join(command)} exited {result.returncode}:\n{result.stdout}\n"
            f"{result.stderr}\n--- container log ---\n{self.logs()}"
        )
        return result

    def wait_healthy(self, base: str, timeout: float = 240) -> None:
        """Until the API answers /healthz; fails at once, with the container's log, if the container stopped."""

        def answered() -> bool:
            if not self.running():
                raise AssertionError(f"container {self.name} stopped:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            return False

        try:
            wait_for(answered, timeout=timeout, what=f"{base}/healthz of container {self.name}", every=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- container log ---\n{self.logs()}") from None


@contextlib.contextmanager
def container(image: BuiltImage, role: str, options: Sequence[str], command: Sequence[str]) -> Iterator[Container]:
    """`podman run -d` of the image on the host's network (podman has no other network here), removed at the
    end whatever happened. `--health-interval disable`: no timer for the image's HEALTHCHECK (there is no
    systemd here to run it); `podman healthcheck run` still runs it."""
    name = f"picserve-test-{role}-{uuid.uuid4().hex[:8]}"
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--label",
        LABEL,
        "--network",
        "host",
        "--health-interval",
        "disable",
        # one torch thread: the tiny model gains nothing from more, and the cores are shared
        "-e",
        "OMP_NUM_THREADS=1",
        "-e",
        "PICSERVE_DEVICE=cpu",
        *options,
        image.name,
        *command,
        timeout=120,
    )
    try:
        yield Container(name)
    finally:
        podman("rm", "--force", "--time", "10", name, check=False, timeout=120)


def _folder_for(image: BuiltImage, path: Path) -> Path:
    """A folder the image's account can write (its USER is not root)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, image.uid, image.uid)
    return path


def _readable_models(models_dir: Path, target: Path) -> Path:
    """A copy of the test models folder that the image's account can read: some of the cache's files are
    its writer's only (mode 0600)."""
    shutil.copytree(models_dir, target, ignore=shutil.ignore_patterns("*.lock"))
    for folder, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(Path(folder) / name, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    return target


def _key(api: Container) -> dict[str, str]:
    """A key made with the image's own CLI in the API's container (its database, its server secret)."""
    made = api.exec("picserve", "keys", "create", "--name", "container-test", "--credits", "100000")
    key: dict[str, str] = json.loads(made.stdout)
    assert set(key) >= {"PublicKey", "PrivateKey"}, made.stdout
    return key


def _generate(base: str, key: dict[str, str], seed: int) -> tuple[str, str, bytes]:
    """One 64×64 image through the SDK: (TaskUID, its result URL, the PNG)."""
    with Client(base, key["PublicKey"], key["PrivateKey"]) as client:
        uid = client.generate_images_sdxl(
            MainModel={"ModelCode": MODEL},
            PositivePrompts=["a lighthouse at dusk"],
            Width=64,
            Height=64,
            BatchSize=1,
            Seed=seed,
        )
        detail = client.wait(uid, timeout=300)
        assert detail["Status"] == "Finished", detail
        [url] = detail["ImgList"]
        png = client.fetch(url)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (64, 64)
    assert f"Seed: {seed}" in picture.info["parameters"], picture.info
    return uid, url, png


# ------------------------------------------------------------------------------------------------- compose


COMPOSE = ROOT / "compose.yaml"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes as {target: source} (short syntax: SOURCE:TARGET[:MODE])."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def test_compose_file_structure() -> None:
    compose = _compose()
    services = compose["services"]
    named = set(compose["volumes"])
    assert {"models", "results"} <= named

    assert services["postgres"]["image"].startswith("postgres:")
    database_url = "postgresql://picserve:${POSTGRES_PASSWORD:-picserve}@postgres:5432/picserve"

    api = services["api"]
    assert api["command"] == ["serve", "--workers", "0"]
    assert api["build"]["context"] == "." and (ROOT / "Dockerfile").is_file()
    assert api["environment"]["PICSERVE_DATABASE_URL"] == database_url
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _mounts(api) == {"/data": "data", "/data/results": "results", "/models": "models"}

    workers = {name: service for name, service in services.items() if service.get("command", [None])[0] == "worker"}
    assert workers, "no worker service"
    for name, worker in workers.items():
        assert worker["image"] == api["image"], name  # one image for both
        assert worker["environment"]["PICSERVE_DATABASE_URL"] == database_url, name
        # the secret (variable or the data volume's secret.key) opens an ImportModel's token; the models
        # folder is written by ImportModel, which a worker runs
        assert worker["environment"]["PICSERVE_SECRET_KEY"] == "${PICSERVE_SECRET_KEY:-}", name
        assert _mounts(worker) == {"/data": "data", "/data/results": "results", "/models": "models"}, name
        assert not any(entry.endswith(":ro") for entry in worker["volumes"]), name
        assert worker["healthcheck"] == {"disable": True}, name
        [gpu] = worker["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"], name
        assert gpu.get("device_ids") or gpu.get("count"), name

    assert services["minio"]["profiles"] == ["s3"] and services["minio-bucket"]["profiles"] == ["s3"]
    assert not {"profiles"} & set(api) and not any("profiles" in worker for worker in workers.values())

    # every environment variable is explained: a comment on its line or on the line above it
    lines = COMPOSE.read_text().splitlines()
    variables = {name for service in services.values() for name in service.get("environment", {})}
    assert variables >= {"PICSERVE_DATABASE_URL", "PICSERVE_STORAGE", "POSTGRES_PASSWORD", "MINIO_ROOT_USER"}
    for variable in sorted(variables):
        where = [i for i, line in enumerate(lines) if re.match(rf"^\s+{re.escape(variable)}:", line)]
        assert where, f"{variable} not found in compose.yaml"
        for i in where:
            commented = "#" in lines[i] or lines[i - 1].lstrip().startswith("#")
            assert commented, f"compose.yaml line {i + 1}: {variable} has no comment"


def test_compose_file_validates() -> None:
    """Docker Compose's own check of the file against the Compose schema (`docker compose` v2 is not
    installable here: Debian's docker-compose 1.29 reads the same Compose specification)."""
    tool = shutil.which("docker-compose")
    need(
        None
        if tool
        else "needs docker-compose (Debian's package) to validate compose.yaml against the Compose schema; "
        ".ci/run installs it where apt is usable"
    )
    assert tool is not None
    for profile in ([], ["--profile", "s3"]):
        result = _run([tool, "-f", COMPOSE, *profile, "config"], timeout=120, check=False, cwd=ROOT)
        assert result.returncode == 0, f"docker-compose config {' '.join(profile)}:\n{result.stderr}"
        services = yaml.safe_load(result.stdout)["services"]
        assert {"postgres", "api", "worker-gpu0", "minio"} <= set(services)
        assert services["minio"]["profiles"] == ["s3"]  # (1.29 lists the services of every profile)


# --------------------------------------------------------------------------------------------- the image


def test_image_builds_from_its_layer_cache(image: BuiltImage, tmp_path: Path, report: Any) -> None:
    """A rebuild takes every layer from the cache; after a source change only the project's own layers are
    built again, torch and the locked dependencies coming from the cache."""
    again = _build(ROOT, IMAGE, image.loan, tmp_path / "again.log")
    for fragment in ("torch==", "import rembg", "useradd"):
        assert again.cached(fragment), f"rebuild: the step with {fragment!r} did not come from the cache"

    changed = tmp_path / "context"
    changed.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy2(ROOT / name, changed / name)
    shutil.copytree(ROOT / "src", changed / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (changed / "src/picserve/__init__.py").open("a") as source:
        source.write(f"\n# a source change made by tests/packaging/test_container.py ({uuid.uuid4().hex})\n")
    tag = f"{IMAGE}-source-change"
    try:
        edited = _build(changed, tag, image.loan, tmp_path / "source-change.log")
    finally:
        podman("rmi", "--force", tag, check=False)
    assert not edited.cached("COPY src"), "the changed source was not copied again"
    assert not edited.cached("/tmp/picserve-*.whl"), "the project's wheel was not installed again"
    for fragment in ("torch==", "import rembg"):
        assert edited.cached(fragment), f"source change: the step with {fragment!r} was built again"

    assert podman("run", "--rm", "--network", "host", image.name, "--version").stdout.strip() == "picserve 0.1.0"
    assert image.uid != 0, "the image runs as root"
    made = f"base image made in {image.base_seconds:.0f} s; " if image.base_seconds is not None else ""
    report(
        f"container image {image.name}: {image.size / 1e9:.2f} GB; {made}first build {image.first.summary}; "
        f"rebuild {again.summary}; after a source change {edited.summary}"
    )


def test_serve_in_one_container_survives_a_restart(
    image: BuiltImage, models_dir: Path, tmp_path: Path, report: Any
) -> None:
    """`serve`: API, worker and the embedded PostgreSQL in the /data volume, as `docker run` gives them."""
    models = _readable_models(models_dir, tmp_path / "models")
    data = _folder_for(image, tmp_path / "data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    options = [
        *("-v", f"{models}:/models:ro", "-v", f"{data}:/data"),
        # the host's network: listen on loopback only (the image's default is 0.0.0.0)
        *("-e", "PICSERVE_HOST=127.0.0.1", "-e", f"PICSERVE_PORT={port}"),
    ]
    started = time.monotonic()
    with container(image, "serve", options, ["serve"]) as serve:
        serve.wait_healthy(base)
        ready = time.monotonic() - started
        assert podman("healthcheck", "run", serve.name, check=False).returncode == 0, serve.logs()
        assert serve.exec("id", "-u").stdout.strip() == str(image.uid)
        key = _key(serve)
        uid, url, png = _generate(base, key, seed=7)
        assert (data / "pg" / "PG_VERSION").is_file() and (data / "secret.key").is_file()
        # a backup while serving, with the pg_dump bundled in the image (docs/container.md's upgrades)
        backup = serve.exec("picserve", "db", "backup", "/data/backup.dump").stdout
        assert "one snapshot holding 1 key, 1 task (1 finished)" in backup, backup
        assert (data / "backup.dump").stat().st_size > 0

        podman("restart", "--time", "60", serve.name, timeout=180)
        serve.wait_healthy(base)
        with Client(base, key["PublicKey"], key["PrivateKey"]) as client:
            [detail] = client.list_tasks_details([uid])  # signed with the key made before the restart
            assert detail["Status"] == "Finished" and detail["ImgList"] == [url]
            assert client.fetch(url) == png
        _generate(base, key, seed=8)
    report(f"container `serve`: healthy {ready:.0f} s after `podman run`")


def test_api_and_worker_containers_share_a_postgres(image: BuiltImage, models_dir: Path, tmp_path: Path) -> None:
    """The fleet's shape (compose.yaml): `serve --workers 0` and `worker` in containers of their own on one
    PostgreSQL (the host's), the results folder shared as the `results` volume."""
    need(pg_server.skip_reason())
    models = _readable_models(models_dir, tmp_path / "models")
    results = _folder_for(image, tmp_path / "results")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with pg_server.DebianPostgres() as postgres:
        database = ("-e", f"PICSERVE_DATABASE_URL={postgres.url}")
        api_options = [
            *database,
            *("-v", f"{_folder_for(image, tmp_path / 'api-data')}:/data", "-v", f"{results}:/data/results"),
            *("-v", f"{models}:/models:ro"),
            *("-e", "PICSERVE_HOST=127.0.0.1", "-e", f"PICSERVE_PORT={port}"),
        ]
        worker_options = [
            *database,
            *("-v", f"{_folder_for(image, tmp_path / 'worker-data')}:/data", "-v", f"{results}:/data/results"),
            *("-v", f"{models}:/models:ro"),
            "--no-healthcheck",  # a worker has no API
        ]
        with container(image, "api", api_options, ["serve", "--workers", "0"]) as api:
            api.wait_healthy(base)
            with container(image, "worker", worker_options, ["worker", "--name", "container-worker"]) as worker:
                key = _key(api)
                _, url, _ = _generate(base, key, seed=11)
                assert url.startswith(f"{base}/results/")
                listed = api.exec("picserve", "workers", "--json").stdout.splitlines()
                workers = {row["Name"]: row for row in map(json.loads, listed)}
                assert set(workers) == {"container-worker"}, workers  # the API runs none
                assert workers["container-worker"]["TasksDone"] == 1, (workers, worker.logs())

"""`picserve serve`, `picserve keys` and `picserve demo` as a user runs them: subprocesses and HTTP."""

import json
import os
import re
from io import BytesIO
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from picserve import errors
from picserve.sdk import Client
from tests.processes import QUIET, create_key, free_port, picserve, running, serve


def worker_children(pid: int) -> list[psutil.Process]:
    """The `picserve worker` processes that the supervisor `pid` started."""
    return [
        child
        for child in psutil.Process(pid).children(recursive=True)
        if "worker" in child.cmdline() and "picserve" in child.cmdline()
    ]


@pytest.fixture
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("srv")


def test_serve_keys_and_sdk_end_to_end(data_dir, models_dir, tmp_path):
    # A key made while nothing runs (the CLI starts and stops the embedded server itself).
    early = create_key("--credits", 500, name="early", data_dir=data_dir)
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    env = {**os.environ, **QUIET, "PICSERVE_PREVIEW_INTERVAL": "0.05", "PICSERVE_PROGRESS_INTERVAL": "0.05"}
    server = serve(
        "--data-dir", data_dir, "--models-dir", models_dir, "--device", "cpu", log=tmp_path / "serve.log", env=env
    )
    base = server.base
    with running(server):
        workers = worker_children(server.pid)
        assert len(workers) == 1, workers  # serve's default: one worker beside the API
        # A key made while serve runs on the same data folder.
        late = create_key(name="late", data_dir=data_dir)
        # a database command joins the running PostgreSQL, and does not claim to start one
        joined = picserve("keys", "list", "--data-dir", data_dir, env={**os.environ, "PICSERVE_LOG_LEVEL": "info"})
        assert joined.returncode == 0 and "starting embedded PostgreSQL" not in joined.stderr, joined.stderr

        with Client(base, early["PublicKey"], early["PrivateKey"]) as client:
            uid = client.generate_images_sdxl(
                MainModel={"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 6}},
                PositivePrompts=["a red fox"],
                NegativePrompts=["blurry"],
                Width=128,
                Height=96,
                Seed=99,
            )
            detail = client.wait(uid, timeout=180)
            assert detail["Status"] == "Finished", detail
            image = Image.open(BytesIO(httpx.get(detail["ImgList"][0]).content))
            assert image.size == (128, 96) and "Seed: 99" in image.text["parameters"]
            assert detail["ImgList"][0].startswith(base + "/results/")

        with Client(base, late["PublicKey"], late["PrivateKey"]) as other:
            with pytest.raises(errors.TaskNotFound):
                other.list_tasks_details([uid])
            assert other.get_credit_balance()["TotalCredits"] == 1000

        # The CLI client signs through the SDK like any PICPIK client.
        cli = picserve(
            "generate",
            "a blue fox",
            "--url",
            base,
            "--public-key",
            early["PublicKey"],
            "--private-key",
            early["PrivateKey"],
            "--model",
            "picserve-tiny",
            "--width",
            80,
            "--height",
            64,
            "--steps",
            30,
            "--seed",
            7,
            "--lora",
            "kohya-0:0.5",
            "--out",
            data_dir / "cli",
            "--watch-preview",
            data_dir / "previews",
        )
        assert cli.returncode == 0, cli.stderr
        # stderr follows the task (one line per change when not a terminal), stdout has the files
        (cli_uid,) = re.findall(r"^task (\w+)$", cli.stderr, re.M)
        assert re.search(rf"^{cli_uid} Running \d+/30 steps \d+%$", cli.stderr, re.M), cli.stderr
        assert cli.stderr.splitlines()[-1] == f"{cli_uid} Finished", cli.stderr
        previews = sorted((data_dir / "previews").glob(f"{cli_uid}-preview-*.jpg"))
        assert previews and Image.open(previews[0]).size == (10, 8), cli.stderr  # an eighth of 80×64
        ((path, seed),) = re.findall(r"^(\S+\.png)\s+seed=(\d+)$", cli.stdout, re.M)
        assert (
            seed == "7"
            and Image.open(path).size == (80, 64)
            and "LoRA: kohya-0:0.5" in Image.open(path).text["parameters"]
        )
        refused = picserve(
            "generate",
            "x",
            "--url",
            base,
            "--public-key",
            early["PublicKey"],
            "--private-key",
            "wrong",
            "--model",
            "picserve-tiny",
        )
        assert refused.returncode == 2 and "RetCode 170" in refused.stderr
        unreachable = picserve(
            "tasks",
            "show",
            cli_uid,
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--public-key",
            "p",
            "--private-key",
            "k",
        )
        assert unreachable.returncode == 3 and unreachable.stderr.startswith("unreachable:"), unreachable.stderr

        # The client's task commands, and the operator's list from the database.
        keys = ["--url", base, "--public-key", early["PublicKey"], "--private-key", early["PrivateKey"]]
        shown = picserve("tasks", "show", cli_uid, "--json", *keys)
        assert shown.returncode == 0 and json.loads(shown.stdout)["Status"] == "Finished", shown.stderr
        waited = picserve("tasks", "wait", uid, cli_uid, *keys)
        assert waited.returncode == 0 and f"{cli_uid} Finished" in waited.stdout, waited.stderr
        ended = picserve("tasks", "cancel", cli_uid, *keys)  # an ended task: nothing to do, and said so
        assert ended.returncode == 0 and f"{cli_uid}: already ended (Finished)" in ended.stdout, ended.stderr
        # the operator's cancel, in the database, of any key's task
        operator = picserve("tasks", "cancel", uid, "nope", "--operator", "--data-dir", data_dir)
        assert operator.returncode == 1 and f"{uid}: already ended (Finished)" in operator.stdout, operator.stderr
        assert "no such task: nope" in operator.stderr
        listed_tasks = picserve("tasks", "list", "--json", "--status", "Finished", "--data-dir", data_dir)
        rows = [json.loads(line) for line in listed_tasks.stdout.splitlines()]
        assert [r["TaskUID"] for r in rows] == [cli_uid, uid], listed_tasks.stderr  # newest first
        assert rows[0]["Model"] == "picserve-tiny" and rows[0]["Size"] == "80x64"

        listed = picserve("keys", "list", "--data-dir", data_dir)
        assert {json.loads(line)["Name"] for line in listed.stdout.splitlines()} == {"early", "late"}
        assert picserve("keys", "revoke", late["PublicKey"], "--data-dir", data_dir).returncode == 0
        with Client(base, late["PublicKey"], late["PrivateKey"]) as other:
            with pytest.raises(errors.UnknownKey):
                other.list_models()
    code = server.stop()
    assert code == 0, server.describe()
    assert not (data_dir / "pg" / "postmaster.pid").exists(), "serve left PostgreSQL running"
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == [], f"serve left its workers running: {alive}"


def test_demo_prints_png_and_seed(data_dir, models_dir, tmp_path):
    out = tmp_path / "out"
    result = picserve(
        "demo",
        "--data-dir",
        data_dir,
        "--models-dir",
        models_dir,
        "--width",
        96,
        "--height",
        64,
        "--steps",
        6,
        "--seed",
        5,
        "--batch",
        2,
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    paths = re.findall(r"^(\S+\.png)\s+seed=(\d+)\s+96x64$", result.stdout, re.M)
    assert [seed for _, seed in paths] == ["5", "6"]
    for path, _ in paths:
        assert Image.open(path).size == (96, 64)
    assert len(re.findall(r"\sseed=\d+", result.stdout)) == 2 and not re.search(r"^seed ", result.stdout, re.M)
    # it ends with what the image is and what to do next
    assert "The image is noise by design" in result.stdout
    for step in ("make serve", "picserve keys create", "http://127.0.0.1:8080/playground/"):
        assert step in result.stdout, result.stdout
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    # a second run reuses the demo key (topped up), instead of leaving a new key behind every time
    again = picserve(
        "demo",
        "--data-dir",
        data_dir,
        "--models-dir",
        models_dir,
        "--width",
        64,
        "--height",
        64,
        "--steps",
        6,
        "--out",
        out,
        env={**os.environ, "PICSERVE_LOG_LEVEL": "info"},
    )
    assert again.returncode == 0, again.stderr
    listed = picserve("keys", "list", "--data-dir", data_dir, env={**os.environ, "PICSERVE_LOG_LEVEL": "info"})
    keys = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [k["Name"] for k in keys] == ["demo"], listed.stdout
    # the demo started the embedded PostgreSQL once; its `serve` joined it and said nothing of starting one
    assert again.stderr.count("starting embedded PostgreSQL") == 1, again.stderr

"""`picserve upscale` and `picserve remove-background`: their flags refused before any network, the
requests they send and the files they save (against a fake PICPIK endpoint), and their submissions and
refusals by the in-process picserve (FakeEngine cannot run these kinds: nothing here waits for one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from picserve import cli, domain
from picserve.cli.tools import Input, parse_box, result_paths
from picserve.sdk import Client, image_data
from tests.api.conftest import Stack, own_fields, request

runner = CliRunner()
#: an endpoint nothing serves: a command that reached the network would exit 3 (unreachable), not 2
NOWHERE = ["--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]


def flat(output: str) -> str:
    """Output with rich's boxes and line wrapping taken out."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


def picture(path: Path, kind: str = "PNG", size: tuple[int, int] = (80, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (20, 120, 200)).save(path, format=kind)
    return path


def test_help_lists_the_commands():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0 and "upscale" in result.output and "remove-background" in result.output


# --- refused on the command line, before any network (exit 2, a message, no traceback) ----------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scale", "2", "--width", "128"], "give --scale, or --width and --height, not both"),
        (["--width", "128"], "--width needs --height too"),
        (["--height", "128"], "--height needs --width too"),
        ([], "no size given: give --width and --height, or --scale"),
        (["--scale", "9"], "'--scale': Input should be less than or equal to 8"),
        (["--width", "32", "--height", "64"], "'--width': Input should be greater than or equal to 64"),
    ],
)
def test_upscale_refuses_bad_sizes_locally(flags, message, tmp_path):
    image = picture(tmp_path / "cat.png")
    result = runner.invoke(cli.app, ["upscale", str(image), *flags, *NOWHERE])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and result.exception is not None and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("inputs", "flags", "message"),
    [
        (["a.png", "b.png"], ["--box", "0,0,10,10"], "--box marks the subject of one image: give one INPUT with it"),
        (["a.png"], ["--box", "0,0,10"], "expected four whole numbers x1,y1,x2,y2"),
        (["a.png"], ["--box", "10,0,5,10"], "the box needs x1 < x2 and y1 < y2"),
        (["a.png"], ["--erode-size", "41"], "'--erode-size': Input should be less than or equal to 40"),
        (
            ["a.png"],
            ["--foreground-threshold", "256"],
            "'--foreground-threshold': Input should be less than or equal to 255",
        ),
        (["a.png"], ["--hair", "maybe"], "'maybe' is not one of 'auto', 'on', 'off'"),
        ([f"p{i}.png" for i in range(17)], [], "at most 16 images in one request (got 17)"),
        (["missing.png"], [], "missing.png: no such file"),
        (["notes.txt"], [], "notes.txt: not a PNG, JPEG or WebP image"),
        (["task:abc"], [], "'task:abc': a task's result is task:TASKUID/INDEX"),
    ],
)
def test_remove_background_refuses_bad_flags_locally(inputs, flags, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in inputs:
        if name.endswith(".png") and name != "missing.png":
            picture(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    result = runner.invoke(cli.app, ["remove-background", *inputs, *flags, *NOWHERE])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output


def test_parse_box():
    assert parse_box("180, 264,510,642") == [180, 264, 510, 642]


def test_result_paths_keep_two_inputs_of_one_name_apart(tmp_path):
    sources = [Input("a", "photo"), Input("b", "photo"), Input("c", "ckti5nf2h4keq8mr9n00-0"), Input("d", "photo")]
    assert result_paths(sources, "cutout", tmp_path) == [
        tmp_path / "photo-cutout.png",
        tmp_path / "photo-2-cutout.png",
        tmp_path / "ckti5nf2h4keq8mr9n00-0-cutout.png",
        tmp_path / "photo-3-cutout.png",
    ]


# --- against a fake PICPIK endpoint: the request sent, the task followed, the results saved ----------


class FakePicpik:
    """A PICPIK endpoint on an httpx.MockTransport: records each action's body; a task made by any of
    them ends `status` with one result per image it was sent, served at /results/<n>.png (a
    DescribeImages: one text per image instead, `text <n>`)."""

    def __init__(self, status: str = "Finished") -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.results = 0
        self.texts: list[str] = []

    def __call__(self, http_request: httpx.Request) -> httpx.Response:
        if http_request.method == "GET":
            return httpx.Response(200, content=f"png {http_request.url.path}".encode())
        body = json.loads(http_request.content)
        self.bodies.append(body)
        own: dict[str, Any] = {}
        if body["Action"] == "ListTasksDetails":
            images = [f"http://picpik.test/results/{n}.png" for n in range(self.results)]
            done = self.status == "Finished"
            own = {"TaskDetailList": [self._detail(body["TaskUIDList"][0], images if done else [])]}
        elif body["Action"] == "DescribeImages":
            self.texts = [f"text {n}" for n in range(len(body["ImageList"]))]
            own = {"TaskUID": "t1"}
        else:
            self.results = len(body.get("RawImages", [None]))
            own = {"TaskUID": "t1"}
        return httpx.Response(200, json={"Action": body["Action"], "RetCode": 0, "Message": "", **own})

    def _detail(self, uid: str, images: list[str]) -> dict[str, Any]:
        return {
            **dict.fromkeys(("Prompt", "NegativePrompt", "OriginalPrompt", "OriginalNegativePrompt"), ""),
            "TaskUID": uid,
            "Action": self.bodies[0]["Action"],
            "Status": self.status,
            "ImgList": images,
            "Seed": None,
            "TxtList": self.texts,
            "ConsumeApiPoint": 1,
            "ErrorCode": 0 if self.status == "Finished" else 501,
            "ErrorMassage": "" if self.status == "Finished" else "the model broke",
            "Progress": 1.0,
            "SeedList": [],
            "Warnings": [],
        }

    def sent(self, action: str) -> dict[str, Any]:
        (body,) = [b for b in self.bodies if b["Action"] == action]
        return own_fields(body)


@pytest.fixture
def fake(monkeypatch) -> FakePicpik:
    endpoint = FakePicpik()
    real = Client
    monkeypatch.setattr(
        "picserve.sdk.Client",
        lambda url, public_key, private_key, **_: real(
            url, public_key, private_key, transport=httpx.MockTransport(endpoint)
        ),
    )
    return endpoint


FAKE_KEYS = ["--url", "http://picpik.test", "--public-key", "pub", "--private-key", "priv"]


def test_upscale_sends_resize_image_waits_and_saves_the_result(fake, tmp_path):
    image = picture(tmp_path / "in" / "cat.jpg", "JPEG")
    out = tmp_path / "results"
    result = runner.invoke(
        cli.app, ["upscale", str(image), "--scale", "2", "--model", "4x-ultrasharp", "--out", out, *FAKE_KEYS]
    )
    assert result.exit_code == 0, result.output
    assert fake.sent("ResizeImage") == {"Image": image_data(image), "Scale": 2.0, "UpscaleModel": "4x-ultrasharp"}
    assert (out / "cat-upscaled.png").read_bytes() == b"png /results/0.png"
    assert f"{out / 'cat-upscaled.png'}" in result.stdout.splitlines()
    assert "task t1" in result.output and "t1 Finished" in result.output


def test_upscale_to_a_size_passes_a_task_reference_through(fake, tmp_path):
    result = runner.invoke(
        cli.app,
        [
            "upscale",
            "task:ckti5nf2h4keq8mr9n00/1",
            "--width",
            "2048",
            "--height",
            "1024",
            "--out",
            tmp_path,
            *FAKE_KEYS,
        ],
    )
    assert result.exit_code == 0, result.output
    assert fake.sent("ResizeImage") == {"Image": "task:ckti5nf2h4keq8mr9n00/1", "Width": 2048, "Height": 1024}
    assert (tmp_path / "ckti5nf2h4keq8mr9n00-1-upscaled.png").exists()


def test_remove_background_of_one_image_sends_only_the_flags_given(fake, tmp_path):
    image = picture(tmp_path / "dog.webp", "WEBP")
    result = runner.invoke(
        cli.app, ["remove-background", str(image), "--box", "1,2,30,40", "--hair", "on", "--out", tmp_path, *FAKE_KEYS]
    )
    assert result.exit_code == 0, result.output
    assert fake.sent("RemoveBackground") == {
        "RawImage": image_data(image),
        "Box": [1, 2, 30, 40],
        "HairOptimization": "on",
    }
    assert (tmp_path / "dog-cutout.png").read_bytes() == b"png /results/0.png"


def test_several_inputs_are_one_batch_whose_results_are_saved_in_order(fake, tmp_path):
    first, second = picture(tmp_path / "a" / "photo.png"), picture(tmp_path / "b" / "photo.png", size=(64, 64))
    out = tmp_path / "out"
    flags = ["--only-mask", "--erode-size", "0", "--foreground-threshold", "200", "--background-threshold", "10"]
    args = ["remove-background", str(first), "task:ckti5nf2h4keq8mr9n00/0", str(second), *flags, "--model", "u2net"]
    result = runner.invoke(cli.app, [*args, "--out", out, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("RemoveBackgroundsInBatch") == {
        "RawImages": [image_data(first), "task:ckti5nf2h4keq8mr9n00/0", image_data(second)],
        "OnlyMask": True,
        "ErodeSize": 0,
        "ForegroundThreshold": 200,
        "BackgroundThreshold": 10,
        "BackgroundModel": "u2net",
    }
    saved = [out / "photo-mask.png", out / "ckti5nf2h4keq8mr9n00-0-mask.png", out / "photo-2-mask.png"]
    assert result.stdout.splitlines() == [str(path) for path in saved]
    assert [path.read_bytes() for path in saved] == [f"png /results/{n}.png".encode() for n in range(3)]


def test_no_wait_prints_the_task_uid_and_does_not_follow(fake, tmp_path):
    image = picture(tmp_path / "cat.png")
    result = runner.invoke(cli.app, ["remove-background", str(image), "--no-wait", "--out", tmp_path, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert result.stdout == "t1\n"
    assert [body["Action"] for body in fake.bodies] == ["RemoveBackground"]
    assert not list(tmp_path.glob("*-cutout.png"))


def test_a_failed_task_exits_1_with_its_message(fake, tmp_path):
    fake.status = "Error"
    image = picture(tmp_path / "cat.png")
    result = runner.invoke(cli.app, ["upscale", str(image), "--scale", "2", "--out", tmp_path, *FAKE_KEYS])
    assert result.exit_code == 1, result.output
    assert "task t1 ended Error: the model broke" in result.output
    assert not list(tmp_path.glob("*-upscaled.png"))


# --- against the in-process picserve: what it accepts and refuses (the FakeEngine runs none of them) ---


class _Shared(Client):
    """An SDK client on the in-process app whose `close` leaves the app's TestClient open."""

    def close(self) -> None:
        pass


@pytest.fixture
def served(stack, monkeypatch) -> Stack:
    """The in-process picserve, with `picserve.sdk.Client` made to reach it."""
    monkeypatch.setattr(
        "picserve.sdk.Client",
        lambda url, public_key, private_key, **_: _Shared(url, public_key, private_key, http=stack.api),
    )
    return stack


def key_of(stack: Stack, name: str = "cli") -> tuple[list[str], domain.Account, Client]:
    account = stack.api.portal.call(stack.repo.create_key, name, 100_000)
    args = ["--url", "http://testserver", "--public-key", account.public_key, "--private-key", account.private_key]
    return args, account, _Shared("http://testserver", account.public_key, account.private_key, http=stack.api)


def task_of(stack: Stack, uid: str, account: domain.Account) -> domain.TaskRecord:
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], account.public_key)
    return task


def test_the_server_queues_an_upscale_of_a_file(served, tmp_path):
    keys, account, _ = key_of(served)
    image = picture(tmp_path / "cat.png", size=(80, 64))
    result = runner.invoke(cli.app, ["upscale", str(image), "--scale", "2", "--no-wait", *keys])
    assert result.exit_code == 0, result.output
    task = task_of(served, result.stdout.strip(), account)
    assert task.action == "ResizeImage" and task.status is domain.TaskStatus.QUEUING
    assert isinstance(task.spec, domain.UpscaleSpec) and (task.spec.width, task.spec.height) == (160, 128)


def test_an_upscale_chained_to_a_generated_image_is_queued_and_a_bad_reference_refused(served):
    keys, account, client = key_of(served)
    generated = client.generate_images_sdxl(**request())  # 64x72
    served.run_worker()
    chained = runner.invoke(
        cli.app, ["upscale", f"task:{generated}/0", "--width", "256", "--height", "256", "--no-wait", *keys]
    )
    assert chained.exit_code == 0, chained.output
    task = task_of(served, chained.stdout.strip(), account)
    assert isinstance(task.spec, domain.UpscaleSpec)
    assert (task.spec.source_width, task.spec.source_height, task.spec.width) == (64, 72, 256)

    beyond = runner.invoke(cli.app, ["upscale", f"task:{generated}/3", "--scale", "2", "--no-wait", *keys])
    assert beyond.exit_code == 2 and "refused (RetCode 160): Image: task" in flat(beyond.output), beyond.output
    other_keys, _, _ = key_of(served, "other")
    foreign = runner.invoke(cli.app, ["upscale", f"task:{generated}/0", "--scale", "2", "--no-wait", *other_keys])
    assert foreign.exit_code == 2 and "refused (RetCode 230): Image: task" in flat(foreign.output), foreign.output


def test_an_unknown_model_is_refused_by_the_server_with_its_message(served, tmp_path):
    keys, _, _ = key_of(served)
    image = picture(tmp_path / "cat.png")
    upscaled = runner.invoke(cli.app, ["upscale", str(image), "--scale", "2", "--model", "nope", *keys])
    assert upscaled.exit_code == 2, upscaled.output
    assert "refused (RetCode 231): UpscaleModel 'nope' is not on this server" in flat(upscaled.output)
    cut = runner.invoke(cli.app, ["remove-background", str(image), "--model", "nope", *keys])
    assert cut.exit_code == 2, cut.output
    assert "refused (RetCode 231): BackgroundModel 'nope' is not on this server" in flat(cut.output)
    # no background model installed, none named: the server says what to do
    default = runner.invoke(cli.app, ["remove-background", str(image), str(image), *keys])
    assert default.exit_code == 2 and "models/background" in flat(default.output), default.output


def test_a_scale_too_large_for_the_image_is_refused_by_the_server(served, tmp_path):
    keys, _, _ = key_of(served)
    image = picture(tmp_path / "big.png", size=(1200, 800))
    result = runner.invoke(cli.app, ["upscale", str(image), "--scale", "4", *keys])
    assert result.exit_code == 2, result.output
    assert "refused (RetCode 160): Scale: 4 makes 1200x800 into 4800x3200" in flat(result.output)

"""`picserve generate --controlnet MODEL:IMAGE[:key=value,...]` and `--control-maps`, and `picserve
controlnets`: flags refused before any network with the flag named, the units and images they send (the
queued task's spec, by the in-process picserve), the server's refusals, the control maps saved, and
ListControlNets as tables.

The fast tier: the in-process picserve (in-memory repository, FakeEngine) with header-only control models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from picserve import cli, domain
from picserve.cli.controlnets import control_request, parse_controlnet
from picserve.sdk import Client, image_data
from tests.api.conftest import MODEL, Stack, open_stack
from tests.api.test_controlnet_sdk import install_control_models

runner = CliRunner()
#: an endpoint nothing serves: a command that reached the network would exit 3 (unreachable), not 2
NOWHERE = ["--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]


def flat(output: str) -> str:
    """Output with rich's boxes and line wrapping taken out."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


def picture(path: Path, colour: str = "white", size: tuple[int, int] = (64, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


@pytest.fixture
def pictures(tmp_path, monkeypatch) -> Path:
    """A working folder holding pose.png, depth.png (another picture) and mask.png."""
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "pose.png")
    picture(tmp_path / "depth.png", "grey")
    picture(tmp_path / "mask.png", "black")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_help_lists_the_controlnets_command_and_the_flags():
    assert "controlnets" in runner.invoke(cli.app, ["--help"]).output
    options = flat(runner.invoke(cli.app, ["generate", "--help"]).output)
    assert "--controlnet" in options and "--control-maps" in options and "--no-wait" in options


# --- refused on the command line, before any network (exit 2, the flag named, no traceback) -----------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--controlnet", "xl-canny:pose.png"] * 4, "at most 3 --controlnet units in one request (got 4)"),
        (["--controlnet", "xl-canny:pose.png:strength=2"], "unknown key 'strength' (keys: pre, weight, start, end,"),
        (["--controlnet", "xl-canny:pose.png:weight=3"], "weight=3: must be a number from 0 to 2"),
        (["--controlnet", "xl-canny:pose.png:weight=heavy"], "weight=heavy: must be a number from 0 to 2"),
        (["--controlnet", "xl-canny:pose.png:end=1.5"], "end=1.5: must be a number from 0 to 1"),
        (["--controlnet", "xl-canny:pose.png:start=0.8,end=0.2"], "start 0.8 is after end 0.2"),
        (["--controlnet", "xl-canny:pose.png:weight=1,weight=2"], "weight is given twice"),
        (["--controlnet", "xl-canny:pose.png:weight"], "weight needs a value: weight=…"),
        (["--controlnet", "xl-canny:pose.png:low=50"], "low is a preprocessor's parameter: give pre=… too"),
        (["--controlnet", "xl-canny:pose.png:pre=canny,low=0"], "low=0: must be a whole number from 1 to 255"),
        (["--controlnet", "xl-canny:pose.png:pre=canny,high=2.5"], "high=2.5: must be a whole number from 1 to 255"),
        (["--controlnet", "xl-canny:pose.png:pre=canny,low=200,high=100"], "low 200 is above high 100"),
        (
            ["--controlnet", "xl-canny:pose.png:pre=canny,resolution=32"],
            "resolution=32: must be a whole number from 64",
        ),
        (["--controlnet", "xl-canny:pose.png:pre="], "pre needs a value: pre=…"),
        (["--controlnet", "xl-canny:pose.png:mask="], "mask needs a value: mask=…"),
        (["--controlnet", "xl-canny:pose.png:mode=loud"], "mode=loud: must be Balanced, PromptMoreImportant or"),
        (["--controlnet", "xl-canny:pose.png:resize=Stretch"], "resize=Stretch: must be JustResize, CropAndResize or"),
        (["--controlnet", "xl-union:pose.png:type=x-ray"], "type=x-ray: a ControlNet-Union's type is one of openpose,"),
        (["--controlnet", "xl-canny:pose.png:invert"], "invert inverts the unit's mask: give mask=… too"),
        (["--controlnet", "xl-canny:pose.png:mask=mask.png,invert=maybe"], "invert=maybe: must be true or false"),
        (["--controlnet", "xl-canny:pose.png:mask=pose.png"], "the mask is the control image itself"),
        (["--controlnet", "xl-canny:nope.png"], "nope.png: no such file"),
        (["--controlnet", "xl-canny:notes.txt"], "notes.txt: not a PNG, JPEG or WebP image"),
        (["--controlnet", "xl-canny:pose.png:mask=nope.png"], "nope.png: no such file"),
        (["--controlnet", "xl-canny:task:abc"], "'task:abc': a task's result is task:TASKUID/INDEX"),
        (["--controlnet", "xl-canny"], "expected MODEL:IMAGE[:key=value,...]"),
        (["--controlnet", ":pose.png"], "expected MODEL:IMAGE[:key=value,...]"),
        (["--control-maps"], "the control maps are the --controlnet units': give --controlnet too"),
    ],
)
def test_bad_controlnet_flags_are_refused_locally_naming_the_flag(pictures, flags, message):
    result = runner.invoke(cli.app, ["generate", "a dancer", "--model", MODEL, *flags, *NOWHERE])
    assert result.exit_code == 2, result.output
    said = flat(result.output)
    assert message in said and "Traceback" not in result.output
    if flags != ["--control-maps"]:
        assert "'--controlnet'" in said


def test_the_flags_become_images_and_units(pictures):
    images, units = control_request(
        [
            "xl-canny:pose.png:pre=canny,weight=0.5,low=50,high=150,resolution=768",
            "xl-depth:depth.png:mask=mask.png,invert,start=0.2,end=0.9,mode=prompt,resize=justresize",
            "xl-canny:pose.png:mode=ControlNetMoreImportant",  # the same picture: sent once
        ]
    )
    assert images == [image_data("pose.png"), image_data("depth.png"), image_data("mask.png")]
    assert units == [
        {
            "ImageIndex": 0,
            "PreProcessor": {
                "ModelCode": "canny",
                "InferenceParams": {"CannyLowThreshold": 50, "CannyHighThreshold": 150, "Resolution": 768},
            },
            "ControlModel": {"ModelCode": "xl-canny", "InferenceParams": {"ControlWeight": 0.5}},
        },
        {
            "ImageIndex": 1,
            "MaskIndex": 2,
            "InvertMask": True,
            "ControlModel": {
                "ModelCode": "xl-depth",
                "InferenceParams": {
                    "StartingStep": 0.2,
                    "EndingStep": 0.9,
                    "ControlMode": "PromptMoreImportant",
                    "ResizeMode": "JustResize",
                },
            },
        },
        {
            "ImageIndex": 0,
            "ControlModel": {"ModelCode": "xl-canny", "InferenceParams": {"ControlMode": "ControlNetMoreImportant"}},
        },
    ]


def test_a_preprocessors_other_parameters_go_by_their_inference_params_names(pictures):
    flag = parse_controlnet("xl-sketch:pose.png:pre=scribble_xdog,XDoGThreshold=20,cannylowthreshold=40")
    assert flag.preprocessor_params == {"XDoGThreshold": 20, "CannyLowThreshold": 40}  # the latter is low=
    assert parse_controlnet("m:pose.png:pre=recolor_luminance,GammaCorrection=0.5").preprocessor_params == {
        "GammaCorrection": 0.5
    }
    for value, message in [
        ("m:pose.png:pre=scribble_xdog,XDoGThreshold=65", "XDoGThreshold=65: must be a whole number from 1 to 64"),
        ("m:pose.png:pre=canny,low=50,CannyLowThreshold=60", "low is given twice"),
        ("m:pose.png:GammaCorrection=0.5", "GammaCorrection is a preprocessor's parameter: give pre=… too"),
    ]:
        with pytest.raises(typer.BadParameter, match=re.escape(message)):
            parse_controlnet(value)


def test_an_image_may_be_a_task_reference_or_a_file_with_a_colon_in_its_name(pictures):
    chained = parse_controlnet("xl-union:task:ckti5nf2h4keq8mr9n00/1:type=Depth,invert=no,mask=mask.png")
    assert chained.image == "task:ckti5nf2h4keq8mr9n00/1" and chained.options == {
        "control_type": "depth",
        "invert_mask": False,
    }
    picture(pictures / "a:b.png")
    assert parse_controlnet("xl-canny:a:b.png").image == image_data("a:b.png")
    assert parse_controlnet("xl-canny:a:b.png:weight=1").options == {"weight": 1.0}
    masked = parse_controlnet("xl-canny:pose.png:mask=task:ckti5nf2h4keq8mr9n00/2,weight=0.5")
    assert (masked.image, masked.mask) == (image_data("pose.png"), "task:ckti5nf2h4keq8mr9n00/2")
    assert masked.options == {"weight": 0.5}


# --- against the in-process picserve: the queued task's units, the server's refusals -------------------


class _Shared(Client):
    """An SDK client on the in-process app whose `close` leaves the app's TestClient open."""

    def close(self) -> None:
        pass


@pytest.fixture
def served(settings, pictures, monkeypatch) -> Iterator[Stack]:
    """The in-process picserve with the control models, and `picserve.sdk.Client` made to reach it."""
    install_control_models(settings.models_dir)
    with open_stack(settings) as stack:
        monkeypatch.setattr(
            "picserve.sdk.Client",
            lambda url, public_key, private_key, **_: _Shared(url, public_key, private_key, http=stack.api),
        )
        yield stack


def keys_of(stack: Stack) -> tuple[list[str], domain.Account]:
    account = stack.api.portal.call(stack.repo.create_key, "cli", 100_000)
    args = ["--url", "http://testserver", "--public-key", account.public_key, "--private-key", account.private_key]
    return args, account


def spec_of(stack: Stack, uid: str, account: domain.Account) -> domain.GenerationSpec:
    (task,) = stack.api.portal.call(stack.repo.get_many, [uid], account.public_key)
    assert isinstance(task.spec, domain.GenerationSpec)
    return task.spec


def generate(keys: list[str], *flags: str) -> Any:
    args = ["generate", "a dancer", "--model", MODEL, "--width", "64", "--height", "72", *flags, *keys]
    return runner.invoke(cli.app, args)


def test_the_server_queues_the_units_the_flags_build(served):
    keys, account = keys_of(served)
    result = generate(
        keys,
        "--controlnet",
        "xl-canny:pose.png:pre=canny,weight=0.5,low=50,resolution=256",
        "--controlnet",
        "xl-depth-mid:depth.png:mask=mask.png,invert,start=0.2,mode=ControlNetMoreImportant",
        "--control-maps",
        "--no-wait",
    )
    assert result.exit_code == 0, result.output
    spec = spec_of(served, result.stdout.strip(), account)
    assert spec.return_control_maps and len(spec.control_images_keys) == 3
    canny, depth = spec.control_units
    assert (canny.model_code, canny.preprocessor, canny.image_index, canny.mask_index) == ("xl-canny", "canny", 0, None)
    assert canny.weight == 0.5
    assert canny.preprocessor_params == {"CannyLowThreshold": 50, "CannyHighThreshold": 200, "Resolution": 256}
    assert (depth.model_code, depth.preprocessor, depth.invert_mask, depth.start) == ("xl-depth-mid", "none", True, 0.2)
    assert (depth.weight, depth.control_mode) == (0.6, "ControlNetMoreImportant")  # the sidecar's weight


def test_a_union_unit_on_a_chained_result_runs_and_its_image_is_saved(served, tmp_path):
    keys, account = keys_of(served)
    first = generate(keys, "--no-wait")
    served.run_worker()
    uid = first.stdout.strip()
    chained = generate(keys, "--controlnet", f"xl-union-promax:task:{uid}/0:type=tile", "--no-wait")
    assert chained.exit_code == 0, chained.output
    (unit,) = spec_of(served, chained.stdout.strip(), account).control_units
    assert (unit.model_type, unit.control_type, unit.preprocessor) == ("union", "tile", "none")
    served.run_worker()
    shown = runner.invoke(cli.app, ["tasks", "show", chained.stdout.strip(), *keys])
    assert shown.exit_code == 0 and "Finished" in shown.output, shown.output


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("nope:pose.png", "refused (RetCode 231): ControlNetList[0].ControlModel.ModelCode 'nope' is not a"),
        ("control_v11p_sd15_canny:pose.png", "is an SD1 ControlNet and does not fit main model 'fast-xl'"),
        ("xl-canny:pose.png:pre=depth", "ControlNetList[0].PreProcessor.ModelCode 'depth': its model files are not"),
        ("xl-union-promax:pose.png", "is a ControlNet-Union model; name the control type"),
        ("xl-canny:pose.png:type=depth", "'xl-canny' is not a ControlNet-Union model"),
    ],
)
def test_what_only_the_server_can_judge_is_its_refusal(served, flag, message):
    keys, _ = keys_of(served)
    result = generate(keys, "--controlnet", flag, "--no-wait")
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output


def test_controlnets_prints_the_models_and_the_preprocessors_as_tables(served):
    keys, _ = keys_of(served)
    result = runner.invoke(cli.app, ["controlnets", *keys])
    assert result.exit_code == 0, result.output
    models, preprocessors = result.stdout.split("\n\n")
    lines = models.splitlines()
    assert lines[0].split() == [
        "CONTROL",
        "MODEL",
        "TYPE",
        "BASE",
        "PREPROCESSORS",
        "DEFAULTS",
        "MAIN",
        "MODELS",
        "PROBLEM",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"control_v11p_sd15_canny", "xl-canny", "xl-depth-mid", "xl-union-promax"}
    kind, base, pairs = rows["xl-canny"].split()[1:4]
    assert (kind, base, pairs.split(",")[0], pairs.split(",")[-1]) == ("ControlNet", "SDXL", "canny", "none")
    assert "weight=1 start=0 end=1 mode=Balanced resize=ResizeAndFill" in rows["xl-canny"]
    assert "weight=0.6" in rows["xl-depth-mid"] and "fast-xl" in rows["xl-depth-mid"]
    assert rows["xl-union-promax"].split()[1] == "ControlNetUnion"
    assert rows["control_v11p_sd15_canny"].split()[2] == "SD1"
    pre_lines = preprocessors.splitlines()
    assert pre_lines[0].split() == ["PREPROCESSOR", "NAME", "UNION", "TYPE", "DEFAULTS", "CONTROL", "MODELS"]
    pre_rows = {line.split()[0]: line for line in pre_lines[1:]}
    assert "none" in pre_rows and "depth" not in pre_rows  # MiDaS's annotator file is not installed
    assert "low=100 high=200 resolution=512" in pre_rows["canny"] and "xl-canny" in pre_rows["canny"]

    as_json = runner.invoke(cli.app, ["controlnets", "--json", *keys])
    assert as_json.exit_code == 0, as_json.output
    reply = json.loads(as_json.stdout)
    assert (
        set(reply) == {"PreProcessors", "ControlModels"} and reply["ControlModels"]["xl-canny"]["BaseModel"] == "SDXL"
    )


def test_controlnets_reports_an_unreachable_server(instant_resends):
    result = runner.invoke(cli.app, ["controlnets", *NOWHERE])
    assert result.exit_code == 3 and "unreachable:" in result.output


# --- the control maps come back after the images and are saved beside them (a fake PICPIK endpoint) ----


class MapsEndpoint:
    """A PICPIK endpoint on an httpx.MockTransport: GenerateImagesSDXL's task finishes with `images`
    images (their seeds in SeedList) and then `maps` control maps in ImgList."""

    def __init__(self, images: int, maps: int, seeds: bool = True) -> None:
        self.urls = [f"http://picpik.test/results/{n}.png" for n in range(images + maps)]
        self.seeds = list(range(7, 7 + images)) if seeds else []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, http_request: httpx.Request) -> httpx.Response:
        if http_request.method == "GET":
            return httpx.Response(200, content=f"png {http_request.url.path}".encode())
        body = json.loads(http_request.content)
        self.bodies.append(body)
        own: dict[str, Any] = {"TaskUID": "t1"}
        if body["Action"] == "ListTasksDetails":
            detail = {"TaskUID": "t1", "Action": "GenerateImagesSDXL", "Status": "Finished", "ImgList": self.urls}
            detail |= {"Seed": 7, "SeedList": self.seeds, "Progress": 1.0, "ErrorMassage": ""}
            own = {"TaskDetailList": [detail]}
        return httpx.Response(200, json={"Action": body["Action"], "RetCode": 0, "Message": "", **own})


def fake_endpoint(monkeypatch, endpoint: MapsEndpoint) -> list[str]:
    real = Client
    monkeypatch.setattr(
        "picserve.sdk.Client",
        lambda url, public_key, private_key, **_: real(
            url, public_key, private_key, transport=httpx.MockTransport(endpoint)
        ),
    )
    return ["--url", "http://picpik.test", "--public-key", "pub", "--private-key", "priv"]


@pytest.mark.parametrize("seeds", [True, False])  # a PICPIK server without SeedList: --batch counts the images
def test_control_maps_are_asked_for_and_saved_after_the_images(pictures, monkeypatch, seeds):
    endpoint = MapsEndpoint(images=2, maps=2, seeds=seeds)
    keys = fake_endpoint(monkeypatch, endpoint)
    out = pictures / "out"
    flags = ["--controlnet", "xl-canny:pose.png:pre=canny", "--controlnet", "xl-depth:depth.png", "--control-maps"]
    result = runner.invoke(
        cli.app, ["generate", "a dancer", "--model", "m", "--batch", "2", *flags, "--out", out, *keys]
    )
    assert result.exit_code == 0, result.output
    sent = endpoint.bodies[0]
    assert sent["ReturnControlMaps"] is True and len(sent["ControlNetList"]) == 2 and len(sent["ImageAndMaskList"]) == 2
    saved = [out / "t1-0.png", out / "t1-1.png", out / "t1-control-0.png", out / "t1-control-1.png"]
    assert [path.read_bytes() for path in saved] == [f"png /results/{n}.png".encode() for n in range(4)]
    printed = result.stdout.splitlines()
    assert printed[0] == (f"{saved[0]}  seed=7" if seeds else str(saved[0]))
    assert printed[2:] == [f"{saved[2]}  control map", f"{saved[3]}  control map"]


def test_without_control_maps_nothing_is_asked_and_every_result_is_an_image(pictures, monkeypatch):
    endpoint = MapsEndpoint(images=1, maps=0)
    keys = fake_endpoint(monkeypatch, endpoint)
    result = runner.invoke(
        cli.app, ["generate", "a dancer", "--model", "m", "--controlnet", "xl-canny:pose.png", "--out", "out", *keys]
    )
    assert result.exit_code == 0, result.output
    assert "ReturnControlMaps" not in endpoint.bodies[0]
    assert result.stdout.splitlines() == [f"{Path('out') / 't1-0.png'}  seed=7"]

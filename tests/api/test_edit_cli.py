"""`picserve generate --hires` and `picserve edit inpaint|outpaint|erase`: flags refused before any network,
the requests they send and the files they save (against a fake PICPIK endpoint), and what the in-process
picserve (FakeEngine) queues, refuses and finishes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from picserve import cli, domain
from picserve.cli.generate import parse_size
from picserve.sdk import Client, image_data
from tests.api.conftest import MODEL, Stack
from tests.api.test_tools_cli import FAKE_KEYS, NOWHERE, _Shared, fake, flat, key_of, task_of

__all__ = ["fake"]  # the fake PICPIK endpoint fixture, shared with the tools' CLI tests

runner = CliRunner()


def picture(path: Path, size: tuple[int, int] = (96, 64), colour: str = "grey", box: tuple[int, ...] = ()) -> Path:
    """A PNG at `path`; `box` (x1, y1, x2, y2) painted white (a mask marking it, on black)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if box:
        image.paste((255, 255, 255), box)
    image.save(path, format="PNG")
    return path


@pytest.fixture
def pictures(tmp_path, monkeypatch) -> Path:
    """A working folder with photo.png (96×64), mask.png (its size, a white box) and small.png (32×32)."""
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "photo.png")
    picture(tmp_path / "mask.png", colour="black", box=(8, 8, 32, 32))
    picture(tmp_path / "small.png", (32, 32), "black", (0, 0, 8, 8))
    return tmp_path


@pytest.fixture
def served(stack, monkeypatch) -> Stack:
    """The in-process picserve, with `picserve.sdk.Client` made to reach it."""
    monkeypatch.setattr(
        "picserve.sdk.Client",
        lambda url, public_key, private_key, **_: _Shared(url, public_key, private_key, http=stack.api),
    )
    return stack


def test_help_lists_the_edit_group_and_the_hires_flags():
    assert "edit" in runner.invoke(cli.app, ["--help"]).output
    group = flat(runner.invoke(cli.app, ["edit", "--help"]).output)
    assert "inpaint" in group and "outpaint" in group and "erase" in group
    generate = flat(runner.invoke(cli.app, ["generate", "--help"]).output)
    for flag in ("--hires", "--hires-upscaler", "--hires-steps", "--hires-denoise", "--hires-first-pass"):
        assert flag in generate
    inpaint = flat(runner.invoke(cli.app, ["edit", "inpaint", "--help"]).output)
    assert "--only-masked" in inpaint and "--padding" in inpaint and "--strength" in inpaint


def test_parse_size():
    assert parse_size("1024x576", "--x") == (1024, 576)
    assert parse_size("768×512", "--x") == (768, 512)


# --- refused on the command line, before any network (exit 2, a message, no traceback) ----------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["generate", "a cat", "--model", MODEL, "--hires-steps", "10"],
            "--hires-steps sets the hires fix: give --hires",
        ),
        (["generate", "a cat", "--model", MODEL, "--hires", "--hires-first-pass", "big"], "expected WIDTHxHEIGHT"),
        (["generate", "a cat", "--model", MODEL, "--hires", "--hires-first-pass", "32x32"], "each side must be 64 to"),
        (["generate", "a cat", "--model", MODEL, "--hires", "--hires-denoise", "2"], "'--hires-denoise'"),
        (
            ["edit", "inpaint", "photo.png", "mask.png", "--model", MODEL, "--prompt", "x", "--padding", "8"],
            "--padding is --only-masked's: give --only-masked too",
        ),
        (
            ["edit", "inpaint", "photo.png", "mask.png", "--model", MODEL, "--prompt", "x", "--strength", "1.5"],
            "'--strength'",
        ),
        (["edit", "inpaint", "photo.png", "nope.png", "--model", MODEL, "--prompt", "x"], "nope.png: no such file"),
        (["edit", "outpaint", "photo.png", "--model", MODEL, "--prompt", "x"], "no margin given"),
        (["edit", "outpaint", "photo.png", "--model", MODEL, "--prompt", "x", "--left", "-1"], "'--left'"),
        (["edit", "erase", "photo.png", "mask.png", "--model", "a", "--main-model", "b"], "give one"),
        (["edit", "erase", "photo.png", "mask.png", "--seed", "3"], "--seed is the SDXL pass's"),
        (["edit", "erase", "photo.png", "mask.png", "--mask-blur", "65"], "'--mask-blur'"),
        (["edit", "erase", "photo.png", "task:abc"], "a task's result is task:TASKUID/INDEX"),
    ],
)
def test_bad_flags_are_refused_locally(pictures, args, message):
    result = runner.invoke(cli.app, [*args, *NOWHERE])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output


# --- against a fake PICPIK endpoint: the request sent, the task followed, the results saved ----------


def test_generate_with_hires_sends_the_hires_fix(fake, tmp_path):
    args = ["generate", "a castle", "--model", MODEL, "--width", "2048", "--height", "1152", "--hires"]
    flags = ["--hires-upscaler", "Lanczos", "--hires-steps", "12", "--hires-denoise", "0.4"]
    result = runner.invoke(cli.app, [*args, *flags, "--hires-first-pass", "1024x576", "--out", tmp_path, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    sent = fake.sent("GenerateImagesSDXL")
    assert (sent["Width"], sent["Height"]) == (2048, 1152)
    assert sent["HiresFix"] == {
        "Upscaler": "Lanczos",
        "Steps": 12,
        "DenoisingStrength": 0.4,
        "FirstPassWidth": 1024,
        "FirstPassHeight": 576,
    }
    plain = runner.invoke(cli.app, ["generate", "a cat", "--model", MODEL, "--hires", "--no-wait", *FAKE_KEYS])
    assert plain.exit_code == 0, plain.output
    assert fake.bodies[-1]["HiresFix"] == {}  # the server's defaults


def test_inpaint_sends_modify_masked_pixels_and_saves_the_result(fake, pictures):
    args = ["edit", "inpaint", "photo.png", "mask.png", "--model", MODEL, "--prompt", "a red scarf"]
    flags = ["--only-masked", "--padding", "16", "--resolution", "768", "--mask-blur", "4", "--invert"]
    more = ["--strength", "0.8", "--extra", "small.png", "--seed", "7", "--negative", "blurry", "--steps", "20"]
    result = runner.invoke(cli.app, [*args, *flags, *more, "--out", "out", *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("ModifyMaskedPixels") == {
        "MainModel": {"ModelCode": MODEL, "InferenceParams": {"Steps": 20}},
        "PositivePrompts": ["a red scarf"],
        "NegativePrompts": ["blurry"],
        "Seed": 7,
        "ImageAndMaskList": [image_data(pictures / n) for n in ("photo.png", "mask.png", "small.png")],
        "Masked": {
            "ImageIndex": 0,
            "MaskIndex": 1,
            "InvertMask": True,
            "MaskBlur": 4,
            "InpaintArea": "OnlyMasked",
            "OnlyMaskedPadding": 16,
            "OnlyMaskedResolution": 768,
        },
        "Image2Image": {"ImageIndex": 2, "ReferStrength": 0.8},
    }
    saved = Path("out") / "photo-inpainted.png"
    assert saved.read_bytes() == b"png /results/0.png" and str(saved) in result.stdout.splitlines()


def test_outpaint_sends_the_margins_and_no_mask(fake, pictures):
    args = ["edit", "outpaint", "task:ckti5nf2h4keq8mr9n00/0", "--model", MODEL, "--prompt", "a beach"]
    result = runner.invoke(cli.app, [*args, "--left", "128", "--right", "64", "--no-wait", *FAKE_KEYS])
    assert result.exit_code == 0 and result.stdout == "t1\n", result.output
    sent = fake.sent("ModifyMaskedPixels")
    assert sent["ImageAndMaskList"] == ["task:ckti5nf2h4keq8mr9n00/0"] and sent["Masked"] == {"ImageIndex": 0}
    assert sent["Outpaint"] == {"Left": 128, "Top": 0, "Right": 64, "Bottom": 0}


def test_erase_sends_remove_contents_with_only_the_flags_given(fake, pictures):
    result = runner.invoke(cli.app, ["edit", "erase", "photo.png", "mask.png", "--out", "out", *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("RemoveContents") == {"RawImage": image_data("photo.png"), "Mask": image_data("mask.png")}
    assert (Path("out") / "photo-erased.png").exists()
    fake.bodies.clear()
    flags = ["--invert", "--mask-blur", "0", "--main-model", MODEL, "--seed", "5", "--no-wait"]
    result = runner.invoke(cli.app, ["edit", "erase", "photo.png", "mask.png", *flags, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("RemoveContents") == {
        "RawImage": image_data("photo.png"),
        "Mask": image_data("mask.png"),
        "InvertMask": True,
        "MaskBlur": 0,
        "MainModel": {"ModelCode": MODEL},
        "Seed": 5,
    }


def test_a_failed_edit_exits_1_with_its_message(fake, pictures):
    fake.status = "Error"
    result = runner.invoke(cli.app, ["edit", "erase", "photo.png", "mask.png", "--out", "out", *FAKE_KEYS])
    assert result.exit_code == 1 and "task t1 ended Error: the model broke" in result.output, result.output
    assert not Path("out").exists()


# --- against the in-process picserve (FakeEngine runs the generation kinds) ---------------------------


def result_size(stack: Stack, client: Client, uid: str) -> tuple[int, int]:
    stack.run_worker()
    detail = client.wait(uid, timeout=5, poll=0)
    assert detail["Status"] == "Finished", detail
    with Image.open(io.BytesIO(client.fetch(detail["ImgList"][0]))) as result:
        return result.size


def test_the_server_queues_and_finishes_a_hires_generation(served):
    keys, account, client = key_of(served)
    args = ["generate", "a cat", "--model", MODEL, "--width", "256", "--height", "192", "--hires", "--no-wait"]
    result = runner.invoke(cli.app, [*args, "--hires-denoise", "0.5", *keys])
    assert result.exit_code == 0, result.output
    uid = result.stdout.strip()
    spec = task_of(served, uid, account).spec
    assert isinstance(spec, domain.GenerationSpec) and spec.hires is not None
    assert (spec.hires.width, spec.hires.height, spec.hires.strength) == (128, 96, 0.5)
    assert result_size(served, client, uid) == (256, 192)
    refused = runner.invoke(cli.app, [*args, "--hires-upscaler", "nope", *keys])
    assert refused.exit_code == 2, refused.output
    assert "refused (RetCode 231): HiresFix.Upscaler 'nope' is not on this server" in flat(refused.output)


def test_the_server_queues_and_finishes_inpaint_outpaint_and_an_sdxl_erase(served, pictures):
    keys, account, client = key_of(served)
    base = ["--model", MODEL, "--prompt", "a red scarf", "--no-wait", *keys]
    inpainted = runner.invoke(cli.app, ["edit", "inpaint", "photo.png", "mask.png", "--only-masked", *base])
    assert inpainted.exit_code == 0, inpainted.output
    uid = inpainted.stdout.strip()
    task = task_of(served, uid, account)
    assert task.action == "ModifyMaskedPixels" and isinstance(task.spec, domain.GenerationSpec)
    assert task.spec.inpaint_area == "masked"
    assert result_size(served, client, uid) == (96, 64)

    grown = runner.invoke(cli.app, ["edit", "outpaint", f"task:{uid}/0", "--left", "16", "--bottom", "8", *base])
    assert grown.exit_code == 0, grown.output
    assert result_size(served, client, grown.stdout.strip()) == (112, 72)

    erased = runner.invoke(
        cli.app, ["edit", "erase", "photo.png", "mask.png", "--main-model", MODEL, "--no-wait", *keys]
    )
    assert erased.exit_code == 0, erased.output
    assert task_of(served, erased.stdout.strip(), account).action == "RemoveContents"
    assert result_size(served, client, erased.stdout.strip()) == (96, 64)


def test_the_servers_refusals_of_an_edit_are_its_message(served, pictures):
    keys, _, _ = key_of(served)
    wrong_size = runner.invoke(cli.app, ["edit", "erase", "photo.png", "small.png", *keys])
    assert wrong_size.exit_code == 2 and "refused (RetCode 160): Mask" in flat(wrong_size.output), wrong_size.output
    no_eraser = runner.invoke(cli.app, ["edit", "erase", "photo.png", "mask.png", "--model", "big-lama", *keys])
    assert no_eraser.exit_code == 2, no_eraser.output
    assert "refused (RetCode 231): EraseModel 'big-lama' is not on this server" in flat(no_eraser.output)

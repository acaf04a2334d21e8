"""`picserve restore-faces`, `extract`, `describe` and `background`: flags refused before any network, the
requests they send (only the flags given) and what they save or print, against the fake PICPIK endpoint
of the tools' CLI tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from picserve import cli
from picserve.sdk import image_data
from tests.api.test_tools_cli import FAKE_KEYS, NOWHERE, fake, flat, picture  # noqa: F401 (fake: a fixture)

runner = CliRunner()


def test_restore_faces_sends_the_strength_and_saves_the_result(fake, tmp_path):  # noqa: F811
    image = picture(tmp_path / "portrait.jpg", "JPEG")
    result = runner.invoke(cli.app, ["restore-faces", str(image), "--strength", "0.8", "--out", tmp_path, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("RestoreFaces") == {"RawImage": image_data(image), "RestoreStrength": 0.8}
    assert (tmp_path / "portrait-faces.png").read_bytes() == b"png /results/0.png"


def test_extract_sends_the_points_in_order(fake, tmp_path):  # noqa: F811
    args = ["extract", "task:ckti5nf2h4keq8mr9n00/0", "--include", "10,20", "--include", "30, 5", "--exclude", "0,0"]
    result = runner.invoke(cli.app, [*args, "--only-mask", "--model", "sam-b", "--out", tmp_path, *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("ExtractContents") == {
        "RawImage": "task:ckti5nf2h4keq8mr9n00/0",
        "IncludePointList": [{"X": 10, "Y": 20}, {"X": 30, "Y": 5}],
        "ExcludePointList": [{"X": 0, "Y": 0}],
        "OnlyMask": True,
        "SegmentModel": "sam-b",
    }
    assert (tmp_path / "ckti5nf2h4keq8mr9n00-0-mask.png").exists()


def test_describe_prints_one_line_per_image_in_order(fake, tmp_path):  # noqa: F811
    first, second = picture(tmp_path / "a.png"), picture(tmp_path / "b.png")
    result = runner.invoke(cli.app, ["describe", str(first), str(second), "--language", "de", *FAKE_KEYS])
    assert result.exit_code == 0, result.output
    assert fake.sent("DescribeImages") == {
        "ImageList": [image_data(first), image_data(second)],
        "TranslateDescription": "de",
    }
    assert result.stdout.splitlines() == ["text 0", "text 1"]


def test_background_sends_the_placement_and_the_reference(fake, tmp_path):  # noqa: F811
    subject, backdrop = picture(tmp_path / "shoe.png"), picture(tmp_path / "beach.jpg", "JPEG")
    args = ["background", str(subject), "--model", "xl", "--prompt", "on a beach", "--scale", "0.5", "--x", "10"]
    result = runner.invoke(
        cli.app, [*args, "--reference", str(backdrop), "--deep-fusion", "--seed", "7", "--out", tmp_path, *FAKE_KEYS]
    )
    assert result.exit_code == 0, result.output
    assert fake.sent("GenerateBackgrounds") == {
        "MainModel": {"ModelCode": "xl"},
        "PositivePrompts": ["on a beach"],
        "Seed": 7,
        "ImageList": [image_data(subject), image_data(backdrop)],
        "TransparentForeground": {"ImageIndex": 0, "Scale": 0.5, "X": 10},
        "BackgroundImage2Image": {"ImageIndex": 1, "DeepFusion": True},
    }
    assert (tmp_path / "shoe-background.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "{image}"], "Missing option '--include'"),
        (["extract", "{image}", "--include", "1;2"], "'1;2': expected two whole numbers X,Y"),
        (["restore-faces", "{image}", "--strength", "2"], "'--strength': Input should be less than or equal to 1"),
        (["describe", "{image}", "--language", "xx"], "'xx' is none of en, zh"),
        (["background", "{image}", "--model", "m", "--prompt", "p", "--deep-fusion"], "--deep-fusion act on"),
    ],
)
def test_refused_before_any_network(args, message, tmp_path):
    image = picture(tmp_path / "x.png")
    result = runner.invoke(cli.app, [a.replace("{image}", str(image)) for a in args] + NOWHERE)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)

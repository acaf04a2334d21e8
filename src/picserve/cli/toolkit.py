"""`picserve restore-faces`, `picserve extract`, `picserve describe` and `picserve background`: a signed
RestoreFaces, ExtractContents, DescribeImages or GenerateBackgrounds to any PICPIK endpoint, followed,
its results saved (images) or printed (texts). Registered on the root app in picserve/cli/__init__.py.

An INPUT is an image file (PNG, JPEG or WebP, sent as a data URI) or `task:<TaskUID>/<index>`, a finished
task's result of the same key, as for `picserve upscale`: `picserve extract photo.png --include 120,80`
then `picserve background task:<its TaskUID>/0 --model … --prompt …` puts the object on a new background
without downloading it in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url
from picserve.cli.tools import MAX_INPUTS, Hair, InputArgument, NoWait, Out, Timeout, read_input, result_paths, run_task

if TYPE_CHECKING:
    from picserve.sdk.types import (
        Coordinate,
        DescribeImagesParams,
        ExtractContentsParams,
        GenerateBackgroundsParams,
        RestoreFacesParams,
    )

__all__ = ["background", "describe", "extract", "parse_point", "restore_faces"]

#: DescribeImages' TranslateDescription codes (messages.LANGUAGES)
LANGUAGES = ("en", "zh", "ja", "ko", "fr", "es", "it", "de", "tr", "ru", "pt", "vi", "id", "th", "ms")


def restore_faces(
    image: str = InputArgument,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    strength: float | None = typer.Option(
        None, min=0, max=1, help="how much of the restored faces is blended in, 0..1 (default: 0.5)"
    ),
    model: str | None = typer.Option(None, help="the face restorer (ListModels' FaceModels; default: the server's)"),
    detector: str | None = typer.Option(
        None, help="the face detector (ListModels' FaceDetectModels; default: the server's)"
    ),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Restore the faces of an image (RestoreFaces); the result is OUT/<stem>-faces.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    source = read_input(image)
    given = {"RestoreStrength": strength, "FaceModel": model, "FaceDetectModel": detector}
    params = cast("RestoreFacesParams", {"RawImage": source.value, **_given(given)})
    run_task(
        (url, public_key, private_key),
        lambda client: client.restore_faces(**params),
        result_paths([source], "faces", out),
        no_wait,
        timeout,
    )


def extract(
    image: str = InputArgument,
    include: list[str] = typer.Option(..., "--include", help="X,Y: a pixel on the object (repeat for more)"),
    exclude: list[str] = typer.Option([], "--exclude", help="X,Y: a pixel off the object (repeat for more)"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    only_mask: bool = typer.Option(False, "--only-mask", help="save the mask (grey) instead of the cut-out"),
    hair: Hair | None = typer.Option(
        None, help="alpha matting for hair and fur (default: auto, where the edge is soft)", show_default=False
    ),
    model: str | None = typer.Option(
        None, help="the Segment Anything model (ListModels' SegmentModels; default: the server's)"
    ),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Cut out the object under the --include points (ExtractContents).

    The result is an RGBA PNG, OUT/<stem>-extract.png, or with --only-mask the mask, OUT/<stem>-mask.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    source = read_input(image)
    params = cast(
        "ExtractContentsParams",
        {
            "RawImage": source.value,
            "IncludePointList": [parse_point(p, "--include") for p in include],
            **_given(
                {
                    "ExcludePointList": [parse_point(p, "--exclude") for p in exclude] or None,
                    "OnlyMask": True if only_mask else None,
                    "HairOptimization": hair.value if hair is not None else None,
                    "SegmentModel": model,
                }
            ),
        },
    )
    run_task(
        (url, public_key, private_key),
        lambda client: client.extract_contents(**params),
        result_paths([source], "mask" if only_mask else "extract", out),
        no_wait,
        timeout,
    )


def describe(
    images: list[str] = InputArgument,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    language: str = typer.Option("en", help=f"the texts' language: {', '.join(LANGUAGES)}"),
    model: str | None = typer.Option(
        None, help="the captioner or tagger (ListModels' CaptionModels; default: the server's)"
    ),
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Describe images as prompts (DescribeImages): one line per INPUT, in order, on stdout.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if len(images) > MAX_INPUTS:
        raise typer.BadParameter(f"at most {MAX_INPUTS} images in one request (got {len(images)})")
    if language not in LANGUAGES:
        raise typer.BadParameter(f"{language!r} is none of {', '.join(LANGUAGES)}", param_hint="'--language'")
    params = cast(
        "DescribeImagesParams",
        {
            "ImageList": [read_input(item).value for item in images],
            **_given({"TranslateDescription": language if language != "en" else None, "CaptionModel": model}),
        },
    )
    detail = run_task(
        (url, public_key, private_key), lambda client: client.describe_images(**params), [], no_wait, timeout
    )
    for text in detail["TxtList"] if detail is not None else ():
        typer.echo(text)


def background(
    foreground: str = typer.Argument(
        ..., metavar="FOREGROUND", help="an RGBA image (PNG, WebP) or task:TASKUID/INDEX", show_default=False
    ),
    model: str = typer.Option(..., help="the main model (ListModels' MainModels)"),
    prompt: str = typer.Option(..., help="what the new background shows"),
    negative: str = typer.Option("", help="negative prompt"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    width: int | None = typer.Option(None, min=64, max=2560, help="the canvas's width [the foreground's]"),
    height: int | None = typer.Option(None, min=64, max=2560, help="the canvas's height [the foreground's]"),
    scale: float | None = typer.Option(None, min=0.05, max=8, help="the foreground's size factor [1, or to fit]"),
    x: int | None = typer.Option(None, help="the foreground's left edge on the canvas [centred]"),
    y: int | None = typer.Option(None, help="the foreground's top edge on the canvas [centred]"),
    reference: str | None = typer.Option(
        None, help="a background image to start from (a file or task:TASKUID/INDEX)", show_default=False
    ),
    strength: float | None = typer.Option(None, min=0, max=1, help="how much of --reference is redrawn [0.3]"),
    deep_fusion: bool = typer.Option(
        False, "--deep-fusion", help="redraw all of --reference, not only a band around the subject"
    ),
    seed: int = typer.Option(-1, min=-1, help="-1: random"),
    batch: int | None = typer.Option(None, min=1, max=16, help="images to make [1]"),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Paint a new background around a transparent foreground (GenerateBackgrounds).

    The foreground's opaque pixels are kept. Results are OUT/<stem>-background.png (-1, -2, … for a batch).

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if (strength is not None or deep_fusion) and reference is None:
        raise typer.BadParameter(
            "--strength and --deep-fusion act on --reference: give one", param_hint="'--reference'"
        )
    source = read_input(foreground)
    images = [source.value] + ([read_input(reference).value] if reference is not None else [])
    placement = _given({"ImageIndex": 0, "Scale": scale, "X": x, "Y": y})
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": model},
        "PositivePrompts": [prompt],
        "Seed": seed,
        "ImageList": images,
        "TransparentForeground": placement,
        **_given({"NegativePrompts": [negative] if negative else None, "Width": width, "Height": height}),
        **_given({"BatchSize": batch}),
    }
    if reference is not None:
        params["BackgroundImage2Image"] = {
            "ImageIndex": 1,
            **_given({"ReferStrength": strength, "DeepFusion": True if deep_fusion else None}),
        }
    body = cast("GenerateBackgroundsParams", params)
    paths = (
        result_paths([source], "background", out)
        if not batch or batch == 1
        else [out / f"{source.stem}-background-{n}.png" for n in range(1, batch + 1)]
    )
    run_task(
        (url, public_key, private_key), lambda client: client.generate_backgrounds(**body), paths, no_wait, timeout
    )


def parse_point(text: str, option: str) -> Coordinate:
    """`X,Y` → `{"X": X, "Y": Y}` (two whole numbers; the server checks that the point lies on the image)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        x, y = (int(part) for part in parts)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected two whole numbers X,Y", param_hint=f"'{option}'") from None
    return {"X": x, "Y": y}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """Only what was given is sent (the rest: the server's defaults)."""
    return {name: value for name, value in options.items() if value is not None}

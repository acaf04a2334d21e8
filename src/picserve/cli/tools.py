"""`picserve upscale`, `picserve remove-background` and `picserve restyle`: a signed ResizeImage,
RemoveBackground, RemoveBackgroundsInBatch or ApplyReferenceStyle to any PICPIK endpoint, followed, its
results saved. Registered on the root app in
picserve/cli/__init__.py.

An INPUT is an image file (PNG, JPEG or WebP, sent as a data URI) or `task:<TaskUID>/<index>`, a finished
task's result of the same key, passed through as it is (chaining: nothing is downloaded or uploaded).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url, client_call, follow

if TYPE_CHECKING:
    from picserve.sdk import Client
    from picserve.sdk.types import (
        ApplyReferenceStyleParams,
        RemoveBackgroundParams,
        RemoveBackgroundsInBatchParams,
        ResizeImageParams,
        TaskDetail,
    )

__all__ = ["Hair", "Input", "parse_box", "read_input", "remove_background", "restyle", "run_task", "upscale"]

#: images one RemoveBackgroundsInBatch takes (messages.MAX_BATCH_IMAGES)
MAX_INPUTS = 16

InputArgument = typer.Argument(
    ..., metavar="INPUT", help="an image file (PNG, JPEG, WebP) or task:TASKUID/INDEX", show_default=False
)
Out = typer.Option(Path("out"), help="where the PNGs are saved")
NoWait = typer.Option(False, "--no-wait", help="print the TaskUID and exit, without waiting for the task")
Timeout = typer.Option(600.0, help="seconds to wait for the task")


class Hair(enum.StrEnum):
    """RemoveBackground's HairOptimization: alpha matting where the mask's edge is soft, always, never."""

    auto = "auto"
    on = "on"
    off = "off"


@dataclass(frozen=True)
class Input:
    """One INPUT: what the request carries (a data URI, or the `task:` reference) and the stem its result
    files are named by (the file's, or `<TaskUID>-<index>`)."""

    value: str
    stem: str


def upscale(
    image: str = InputArgument,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    width: int | None = typer.Option(None, min=64, max=4096, help="the output's width (with --height)"),
    height: int | None = typer.Option(None, min=64, max=4096, help="the output's height (with --width)"),
    scale: float | None = typer.Option(
        None, min=1, max=8, help="the output's size as a factor of the input's, e.g. 2 or 4"
    ),
    model: str | None = typer.Option(
        None, help="the upscaler (ListModels' UpscaleModels), or Lanczos: no model (default: the server's)"
    ),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Upscale (or resize) an image with ResizeImage: to exactly --width×--height, or by --scale.

    If the aspect ratio changes, the image is stretched. The result is saved as OUT/<stem>-upscaled.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if scale is not None and (width is not None or height is not None):
        raise typer.BadParameter("give --scale, or --width and --height, not both", param_hint="'--scale'")
    if scale is None and (width is None or height is None):
        given = "--width" if width is not None else "--height" if height is not None else None
        wanted = f"{given} needs {'--height' if given == '--width' else '--width'} too" if given else "no size given"
        raise typer.BadParameter(f"{wanted}: give --width and --height, or --scale (e.g. 2 or 4)")
    source = read_input(image)
    params: ResizeImageParams = {"Image": source.value}
    if scale is not None:
        params["Scale"] = scale
    if width is not None and height is not None:
        params["Width"], params["Height"] = width, height
    if model is not None:
        params["UpscaleModel"] = model
    paths = result_paths([source], "upscaled", out)
    run_task((url, public_key, private_key), lambda client: client.resize_image(**params), paths, no_wait, timeout)


def remove_background(
    images: list[str] = InputArgument,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    only_mask: bool = typer.Option(False, "--only-mask", help="save the mask (grey) instead of the cut-out"),
    box: str | None = typer.Option(
        None, help="x1,y1,x2,y2: where the subject is, in pixels (one INPUT only)", show_default=False
    ),
    erode_size: int | None = typer.Option(None, min=0, max=40, help="the matte's edge erosion in pixels (default: 15)"),
    foreground_threshold: int | None = typer.Option(
        None, min=0, max=255, help="the matting's foreground threshold (default: 240)"
    ),
    background_threshold: int | None = typer.Option(
        None, min=0, max=255, help="the matting's background threshold (default: 15)"
    ),
    hair: Hair | None = typer.Option(
        None, help="alpha matting for hair and fur (default: auto, where the edge is soft)", show_default=False
    ),
    model: str | None = typer.Option(
        None, help="the segmentation model (ListModels' BackgroundModels; default: the server's)"
    ),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Cut out the subject of each image (RemoveBackground; several INPUTs: RemoveBackgroundsInBatch).

    Each result is an RGBA PNG, OUT/<stem>-cutout.png, or with --only-mask the mask, OUT/<stem>-mask.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if len(images) > MAX_INPUTS:
        raise typer.BadParameter(f"at most {MAX_INPUTS} images in one request (got {len(images)})")
    if box is not None and len(images) > 1:
        raise typer.BadParameter(
            f"--box marks the subject of one image: give one INPUT with it (got {len(images)})", param_hint="'--box'"
        )
    corners = parse_box(box) if box is not None else None
    sources = [read_input(item) for item in images]
    options = {
        "ErodeSize": erode_size,
        "ForegroundThreshold": foreground_threshold,
        "BackgroundThreshold": background_threshold,
        "HairOptimization": hair.value if hair is not None else None,
        "OnlyMask": True if only_mask else None,
        "BackgroundModel": model,
    }
    given = {name: value for name, value in options.items() if value is not None}  # only what was given is sent
    submit: Callable[[Client], str]
    if len(sources) == 1:
        single = cast("RemoveBackgroundParams", {"RawImage": sources[0].value, **given})
        if corners is not None:
            single["Box"] = corners
        submit = lambda client: client.remove_background(**single)  # noqa: E731
    else:
        batch = cast("RemoveBackgroundsInBatchParams", {"RawImages": [source.value for source in sources], **given})
        submit = lambda client: client.remove_backgrounds_in_batch(**batch)  # noqa: E731
    suffix = "mask" if only_mask else "cutout"
    run_task((url, public_key, private_key), submit, result_paths(sources, suffix, out), no_wait, timeout)


def restyle(
    raw: str = typer.Argument(..., metavar="RAW", help="the image to redraw: a file or task:TASKUID/INDEX"),
    style: str = typer.Argument(..., metavar="STYLE", help="the style image: a file or task:TASKUID/INDEX"),
    model: str = typer.Option(..., help="the main model (ListModels' MainModels)"),
    prompt: str | None = typer.Option(None, help="what the image shows (helps the redraw)"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    strength: float = typer.Option(0.5, min=0, max=1, help="how strongly the style image guides (StyleReferStrength)"),
    redraw: float = typer.Option(0.6, min=0, max=1, help="how much of the raw image is redrawn (RawReferStrength)"),
    style_model: str | None = typer.Option(None, help="the IP-Adapter (default: the server's)"),
    seed: int = typer.Option(-1, min=-1, help="-1: random"),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Redraw RAW in the style of STYLE with ApplyReferenceStyle (img2img + an IP-Adapter reference).

    The output has RAW's size; it is saved as OUT/<raw stem>-styled.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    sources = [read_input(raw), read_input(style)]
    params = cast(
        "ApplyReferenceStyleParams",
        {
            "MainModel": {"ModelCode": model},
            "ImageList": [source.value for source in sources],
            "StyleReferStrength": strength,
            "RawReferStrength": redraw,
            "Seed": seed,
            **({"PositivePrompts": [prompt]} if prompt else {}),
            **({"StyleModel": style_model} if style_model else {}),
        },
    )
    paths = result_paths(sources[:1], "styled", out)
    run_task(
        (url, public_key, private_key), lambda client: client.apply_reference_style(**params), paths, no_wait, timeout
    )


def read_input(item: str) -> Input:
    """An INPUT: `task:<TaskUID>/<index>` as it is, else an image file read into a data URI; a malformed
    reference, a missing file or one that is not a PNG, JPEG or WebP is a usage error (exit 2)."""
    from picserve.sdk import image_data, is_task_image

    if item.startswith("task:"):
        if not is_task_image(item):
            raise typer.BadParameter(
                f"{item!r}: a task's result is task:TASKUID/INDEX, e.g. task:ckti5nf2h4keq8mr9n00/0"
            )
        uid, _, index = item.removeprefix("task:").partition("/")
        return Input(item, f"{uid}-{index}")
    path = Path(item)
    if not path.is_file():
        raise typer.BadParameter(f"{item}: no such file" if not path.exists() else f"{item}: not a file")
    try:
        return Input(image_data(path), path.stem)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_box(text: str) -> list[int]:
    """`--box x1,y1,x2,y2` → `[x1, y1, x2, y2]` (four whole numbers, x1 < x2 and y1 < y2; the server checks
    that the box lies inside the image)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        corners = [int(part) for part in parts]
    except ValueError:
        corners = []
    if len(corners) != 4:
        raise typer.BadParameter(f"{text!r}: expected four whole numbers x1,y1,x2,y2", param_hint="'--box'")
    x1, y1, x2, y2 = corners
    if x1 >= x2 or y1 >= y2:
        raise typer.BadParameter(f"{text!r}: the box needs x1 < x2 and y1 < y2", param_hint="'--box'")
    return corners


def run_task(
    endpoint: tuple[str, str, str], submit: Callable[[Client], str], paths: list[Path], no_wait: bool, timeout: float
) -> TaskDetail | None:
    """Submit with a client of `endpoint` (URL, public key, private key) and print the TaskUID (on stdout
    with --no-wait, and that is all: None); else follow the task, save its results at `paths`, in order,
    and return its TaskDetail (a text result's TxtList is the caller's to print)."""
    from picserve.cli.watch import Followed
    from picserve.sdk import Client

    with Client(*endpoint) as client:
        uid = client_call(lambda: submit(client))
        if no_wait:
            typer.echo(uid)
            return None
        typer.echo(f"task {uid}", err=True)
        (detail,) = follow(client, [Followed(uid)], timeout, None)
        for image_url, path in zip(detail["ImgList"], paths, strict=False):
            saved = client_call(functools.partial(client.download, image_url, path))
            typer.echo(str(saved))
        return cast("TaskDetail", detail)


def result_paths(sources: Sequence[Input], suffix: str, out: Path) -> list[Path]:
    """OUT/<stem>-<suffix>.png per source, in order; a stem seen before gets `-2`, `-3`, … (two inputs
    a/photo.png and b/photo.png do not overwrite each other's result)."""
    paths: list[Path] = []
    seen: set[str] = set()
    for source in sources:
        name, n = source.stem, 1
        while name in seen:
            n += 1
            name = f"{source.stem}-{n}"
        seen.add(name)
        paths.append(out / f"{name}-{suffix}.png")
    return paths

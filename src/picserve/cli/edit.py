"""`picserve edit inpaint`, `picserve edit outpaint` and `picserve edit erase`: a signed ModifyMaskedPixels
or RemoveContents to any PICPIK endpoint, followed, its results saved. Registered on the root app in
picserve/cli/__init__.py as the `edit` group.

An IMAGE or MASK is an image file (PNG, JPEG or WebP, sent as a data URI) or `task:<TaskUID>/<index>`, a
finished task's result of the same key, passed through as it is (as for `picserve upscale`). A mask is white
where the image is repainted (or erased), black elsewhere, and has the image's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url
from picserve.cli.tools import Input, NoWait, Out, Timeout, read_input, result_paths, run_task

if TYPE_CHECKING:
    from picserve.sdk.types import ModifyMaskedPixelsParams, RemoveContentsParams

__all__ = ["edit_app", "erase", "inpaint", "outpaint"]

edit_app = typer.Typer(
    help="Edit an image: repaint a masked region (inpaint), grow the canvas (outpaint), erase an object.",
    no_args_is_help=True,
)

ImageArgument = typer.Argument(
    ..., metavar="IMAGE", help="an image file (PNG, JPEG, WebP) or task:TASKUID/INDEX", show_default=False
)
MaskArgument = typer.Argument(
    ...,
    metavar="MASK",
    help="the mask (white: repaint; the image's size): a file or task:TASKUID/INDEX",
    show_default=False,
)
Model = typer.Option(..., help="the main model (ListModels' MainModels; an SDXL inpainting checkpoint is best)")
Prompt = typer.Option(..., help="what the repainted region shows")
Negative = typer.Option("", help="negative prompt")
MaskBlur = typer.Option(None, min=0, max=64, help="the mask's feathering in px (default: 12)")
Invert = typer.Option(False, "--invert", help="invert the mask (repaint where it is black)")
Seed = typer.Option(-1, min=-1, help="-1: random")
Batch = typer.Option(None, min=1, max=16, help="images to make [1]")
Steps = typer.Option(None, min=6, max=100, help="[the model's default (its sidecar), else the server's]")


@edit_app.command()
def inpaint(
    image: str = ImageArgument,
    mask: str = MaskArgument,
    model: str = Model,
    prompt: str = Prompt,
    negative: str = Negative,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    only_masked: bool = typer.Option(
        False,
        "--only-masked",
        help="generate only the mask's box (plus --padding) at about --resolution² px and paste it back "
        "(A1111's 'inpaint area: only masked'): more detail in a small region",
    ),
    padding: int | None = typer.Option(
        None, min=0, max=256, help="with --only-masked: px around the mask's box (default: 32)"
    ),
    resolution: int | None = typer.Option(
        None, min=64, max=2048, help="with --only-masked: the crop's generation side (default: 1024)"
    ),
    mask_blur: int | None = MaskBlur,
    invert: bool = Invert,
    strength: float | None = typer.Option(
        None, min=0, max=1, help="how much of the masked region is redrawn (default: 1, all of it)"
    ),
    extra: str | None = typer.Option(
        None, metavar="IMAGE", help="an image whose content starts the masked region (a file or task:TASKUID/INDEX)"
    ),
    steps: int | None = Steps,
    seed: int = Seed,
    batch: int | None = Batch,
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Repaint the white region of MASK in IMAGE with ModifyMaskedPixels (inpainting).

    The output has IMAGE's size; it is saved as OUT/<stem>-inpainted.png (with --batch, -inpainted-<n>.png).

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if not only_masked and (padding is not None or resolution is not None):
        given = "--padding" if padding is not None else "--resolution"
        raise typer.BadParameter(f"{given} is --only-masked's: give --only-masked too", param_hint=f"'{given}'")
    from picserve.sdk import masked_edit

    source = read_input(image)
    fields = masked_edit(
        source.value,
        read_input(mask).value,
        invert_mask=invert,
        mask_blur=mask_blur,
        only_masked=only_masked,
        padding=padding,
        resolution=resolution,
        strength=strength,
        extra_image=read_input(extra).value if extra is not None else None,
    )
    params = {**_generation(model, prompt, negative, steps, seed, batch), **fields}
    _modify((url, public_key, private_key), params, _paths(source, "inpainted", out, batch), no_wait, timeout)


@edit_app.command()
def outpaint(
    image: str = ImageArgument,
    model: str = Model,
    prompt: str = typer.Option(..., help="what the whole picture shows (the new area is painted to fit it)"),
    negative: str = Negative,
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    left: int = typer.Option(0, min=0, max=2560, help="px added on the left"),
    top: int = typer.Option(0, min=0, max=2560, help="px added at the top"),
    right: int = typer.Option(0, min=0, max=2560, help="px added on the right"),
    bottom: int = typer.Option(0, min=0, max=2560, help="px added at the bottom"),
    mask: str | None = typer.Option(
        None, metavar="MASK", help="also repaint this region of IMAGE (white; a file or task:TASKUID/INDEX)"
    ),
    mask_blur: int | None = MaskBlur,
    steps: int | None = Steps,
    seed: int = Seed,
    batch: int | None = Batch,
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Grow IMAGE's canvas by --left/--top/--right/--bottom px and paint the new area (ModifyMaskedPixels
    with Outpaint margins).

    The output is IMAGE's size plus the margins; it is saved as OUT/<stem>-outpainted.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if not any((left, top, right, bottom)):
        raise typer.BadParameter("no margin given: give --left, --top, --right or --bottom (px to add)")
    from picserve.sdk import masked_edit

    source = read_input(image)
    fields = masked_edit(
        source.value,
        read_input(mask).value if mask is not None else None,
        mask_blur=mask_blur,
        outpaint=(left, top, right, bottom),
    )
    params = {**_generation(model, prompt, negative, steps, seed, batch), **fields}
    _modify((url, public_key, private_key), params, _paths(source, "outpainted", out, batch), no_wait, timeout)


def _modify(
    endpoint: tuple[str, str, str], params: dict[str, Any], paths: list[Path], no_wait: bool, timeout: float
) -> None:
    """Submit ModifyMaskedPixels with `params` and follow it (cli/tools.run_task)."""
    request = cast("ModifyMaskedPixelsParams", params)
    run_task(endpoint, lambda client: client.modify_masked_pixels(**request), paths, no_wait, timeout)


@edit_app.command()
def erase(
    image: str = ImageArgument,
    mask: str = typer.Argument(
        ...,
        metavar="MASK",
        help="what to erase (white; the image's size): a file or task:TASKUID/INDEX",
        show_default=False,
    ),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    mask_blur: int | None = MaskBlur,
    invert: bool = typer.Option(False, "--invert", help="invert the mask (erase where it is black)"),
    model: str | None = typer.Option(
        None, help="the eraser (ListModels' InpaintModels, e.g. a LaMa model; default: the server's)"
    ),
    main_model: str | None = typer.Option(
        None, help="erase with an SDXL inpainting pass of this main model instead of an eraser"
    ),
    seed: int | None = typer.Option(None, min=-1, help="the SDXL pass's seed [-1: random]"),
    out: Path = Out,
    no_wait: bool = NoWait,
    timeout: float = Timeout,
):
    """Erase what MASK covers in IMAGE and fill it plausibly (RemoveContents).

    An eraser model (LaMa, models/inpaint) does it when one is installed; --main-model (or no eraser
    installed) erases with an SDXL inpainting pass. The result is saved as OUT/<stem>-erased.png.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    if model is not None and main_model is not None:
        raise typer.BadParameter(
            "--model erases with an eraser, --main-model with an SDXL pass: give one", param_hint="'--main-model'"
        )
    if seed is not None and main_model is None:
        raise typer.BadParameter("--seed is the SDXL pass's: give --main-model too", param_hint="'--seed'")
    source, mask_source = read_input(image), read_input(mask)
    params: dict[str, Any] = {"RawImage": source.value, "Mask": mask_source.value}
    if invert:
        params["InvertMask"] = True
    if mask_blur is not None:
        params["MaskBlur"] = mask_blur
    if model is not None:
        params["EraseModel"] = model
    if main_model is not None:
        params["MainModel"] = {"ModelCode": main_model}
    if seed is not None:
        params["Seed"] = seed
    request = cast("RemoveContentsParams", params)
    paths = result_paths([source], "erased", out)
    run_task((url, public_key, private_key), lambda client: client.remove_contents(**request), paths, no_wait, timeout)


def _generation(
    model: str, prompt: str, negative: str, steps: int | None, seed: int, batch: int | None
) -> dict[str, Any]:
    """The base generation fields given (what is left out: the model's default, else the server's)."""
    main: dict[str, Any] = {"ModelCode": model}
    if steps is not None:
        main["InferenceParams"] = {"Steps": steps}
    params: dict[str, Any] = {"MainModel": main, "PositivePrompts": [prompt], "Seed": seed}
    if negative:
        params["NegativePrompts"] = [negative]
    if batch is not None:
        params["BatchSize"] = batch
    return params


def _paths(source: Input, suffix: str, out: Path, batch: int | None) -> list[Path]:
    """OUT/<stem>-<suffix>.png; a batch's images OUT/<stem>-<suffix>-<n>.png, n from 1."""
    if not batch or batch == 1:
        return result_paths([source], suffix, out)
    return [out / f"{source.stem}-{suffix}-{n}.png" for n in range(1, batch + 1)]

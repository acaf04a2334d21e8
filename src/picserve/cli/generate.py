"""`picserve generate`: a signed GenerateImagesSDXL to any PICPIK endpoint, followed, its images saved.
Registered on the root app in picserve/cli/__init__.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url, client_call, follow

if TYPE_CHECKING:
    from picserve.sdk.types import GenerateImagesSDXLParams, InferenceParams, ModelRef


def generate(
    prompt: str = typer.Argument(..., help="positive prompt"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    model: str = typer.Option(..., help="MainModel.ModelCode"),
    negative: str = typer.Option("", help="negative prompt"),
    width: int | None = typer.Option(None, help="[the server's: 1024]"),
    height: int | None = typer.Option(None, help="[the server's: 1024]"),
    steps: int | None = typer.Option(None, help="[the model's default (its sidecar), else the server's]"),
    sampler: str | None = typer.Option(None, help="[the model's default (its sidecar), else the server's]"),
    cfg: float | None = typer.Option(None, help="[the model's default (its sidecar), else the server's]"),
    seed: int | None = typer.Option(None, help="[-1: random]"),
    batch: int | None = typer.Option(None, help="[1]"),
    lora: list[str] = typer.Option([], help="CODE or CODE:WEIGHT"),
    controlnet: list[str] = typer.Option(
        [],
        metavar="MODEL:IMAGE[:key=value,...]",
        help="a ControlNet unit (up to 3): a control model (picserve controlnets), its image (a file or "
        "task:UID/INDEX) and any of pre=PREPROCESSOR, weight=0..2, start=0..1, end=0..1, "
        "mode=Balanced|PromptMoreImportant|ControlNetMoreImportant, resize=JustResize|CropAndResize|ResizeAndFill, "
        "mask=FILE, invert, type=UNION_TYPE, and with pre= low=1..255, high=1..255, resolution=64..2048 or any "
        "other preprocessor parameter by its InferenceParams name (XDoGThreshold=20)",
        show_default=False,
    ),
    hires: bool = typer.Option(
        False,
        "--hires",
        help="hires fix: make the image at a smaller first pass, upscale it to --width×--height and denoise it "
        "again there (A1111's hires fix; text-to-image only)",
    ),
    hires_upscaler: str | None = typer.Option(
        None, help="with --hires: Latent (default), Lanczos, or an upscaler of ListModels' UpscaleModels"
    ),
    hires_steps: int | None = typer.Option(
        None, min=0, max=100, help="with --hires: the second pass's steps (default 0: --steps)"
    ),
    hires_denoise: float | None = typer.Option(
        None, min=0, max=1, help="with --hires: the second pass's denoising strength (default: 0.7)"
    ),
    hires_first_pass: str | None = typer.Option(
        None,
        metavar="WxH",
        help="with --hires: the first pass's size, e.g. 1024x576 (default: the aspect ratio at 1024² px, or half "
        "of --width×--height)",
        show_default=False,
    ),
    control_maps: bool = typer.Option(
        False, "--control-maps", help="also save each unit's control map, as OUT/<TaskUID>-control-<n>.png"
    ),
    out: Path = typer.Option(Path("out"), help="where the PNGs are saved"),
    watch_preview: Path | None = typer.Option(None, help="save the live previews in this folder"),
    no_wait: bool = typer.Option(False, "--no-wait", help="print the TaskUID and exit, without waiting for the task"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the task"),
):
    """Sign and send a GenerateImagesSDXL request to any PICPIK endpoint, follow it, and save the images.

    With --hires, --width×--height is the final size: the image is made smaller first, then upscaled and
    denoised again (the --hires-* flags tune it).

    Only the options given are sent: what is left out is the model's default (its sidecar's
    InferenceParams), else the server's; the same for each --controlnet unit's keys.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    from picserve.cli.watch import Followed
    from picserve.sdk import Client

    params = request_params(
        prompt, model, width=width, height=height, steps=steps, sampler=sampler, cfg=cfg, seed=seed, batch=batch
    )
    if negative:
        params["NegativePrompts"] = [negative]
    if lora:
        params["SubModelList"] = [lora_ref(item) for item in lora]
    hires_flags = {
        "--hires-upscaler": hires_upscaler,
        "--hires-steps": hires_steps,
        "--hires-denoise": hires_denoise,
        "--hires-first-pass": hires_first_pass,
    }
    if not hires and (given := [flag for flag, value in hires_flags.items() if value is not None]):
        raise typer.BadParameter(f"{given[0]} sets the hires fix: give --hires too", param_hint=f"'{given[0]}'")
    if hires:
        from picserve.sdk import hires_fix

        first_pass = parse_size(hires_first_pass, "--hires-first-pass") if hires_first_pass is not None else None
        params["HiresFix"] = hires_fix(hires_upscaler, hires_steps, hires_denoise, first_pass)
    if control_maps and not controlnet:
        raise typer.BadParameter("the control maps are the --controlnet units': give --controlnet too")
    if controlnet:
        from picserve.cli.controlnets import control_request

        params["ImageAndMaskList"], params["ControlNetList"] = control_request(controlnet)
        if control_maps:
            params["ReturnControlMaps"] = True
    with Client(url, public_key, private_key) as client:
        uid = client_call(lambda: client.generate_images_sdxl(**params))
        if no_wait:
            typer.echo(uid)
            return
        typer.echo(f"task {uid}", err=True)
        (detail,) = follow(client, [Followed(uid, steps=steps)], timeout, watch_preview)
        images, seeds = detail["ImgList"], detail["SeedList"]
        # ImgList: the images, then (ReturnControlMaps) a control map per unit that ran
        count = len(seeds) if seeds else (batch or 1) if control_maps else len(images)
        for index, image_url in enumerate(images[:count]):
            path = client_call(functools.partial(client.download, image_url, out / f"{uid}-{index}.png"))
            typer.echo(f"{path}  seed={seeds[index]}" if index < len(seeds) else str(path))
        for index, image_url in enumerate(images[count:]):
            path = client_call(functools.partial(client.download, image_url, out / f"{uid}-control-{index}.png"))
            typer.echo(f"{path}  control map")


def request_params(
    prompt: str,
    model: str,
    *,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    batch: int | None = None,
) -> GenerateImagesSDXLParams:
    """The GenerateImagesSDXL params of the options given, and only those: a field left out is the
    model's default (its sidecar's InferenceParams), else the server's, as for any PICPIK client."""
    inference: InferenceParams = {}
    if steps is not None:
        inference["Steps"] = steps
    if sampler is not None:
        inference["Sampler"] = sampler
    if cfg is not None:
        inference["CFGScale"] = cfg
    main: ModelRef = {"ModelCode": model}
    if inference:
        main["InferenceParams"] = inference
    params: GenerateImagesSDXLParams = {"MainModel": main, "PositivePrompts": [prompt]}
    if width is not None:
        params["Width"] = width
    if height is not None:
        params["Height"] = height
    if batch is not None:
        params["BatchSize"] = batch
    if seed is not None:
        params["Seed"] = seed
    return params


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """`WxH` (e.g. `1024x576`; `×` or `X` too) → (width, height), each 64..2560."""
    width, sep, height = text.lower().replace("×", "x").partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None:
        raise typer.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1024x576", param_hint=f"'{flag}'")
    if not all(64 <= side <= 2560 for side in size):
        raise typer.BadParameter(f"{text!r}: each side must be 64 to 2560 px", param_hint=f"'{flag}'")
    return size


def lora_ref(item: str) -> ModelRef:
    """`CODE` or `CODE:WEIGHT` (a `--lora` value) → a SubModelList entry."""
    code, _, weight = item.partition(":")
    if not code:
        raise typer.BadParameter(f"{item!r}: expected CODE or CODE:WEIGHT")
    if not weight:
        return {"ModelCode": code}
    try:
        return {"ModelCode": code, "InferenceParams": {"LoraWeight": float(weight)}}
    except ValueError:
        raise typer.BadParameter(f"{item!r}: the weight after ':' must be a number") from None

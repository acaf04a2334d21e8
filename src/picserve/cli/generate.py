"""`picserve generate`: a signed GenerateImagesSDXL to any PICPIK endpoint, followed, its images saved.
Registered on the root app in picserve/cli/__init__.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from picserve.cli.common import PrivateKey, PublicKey, Url, client_call, follow

if TYPE_CHECKING:
    from picserve.sdk.types import ModelRef


def generate(
    prompt: str = typer.Argument(..., help="positive prompt"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    model: str = typer.Option(..., help="MainModel.ModelCode"),
    negative: str = typer.Option("", help="negative prompt"),
    width: int = typer.Option(1024),
    height: int = typer.Option(1024),
    steps: int = typer.Option(20),
    sampler: str = typer.Option("Euler"),
    cfg: float = typer.Option(7.5),
    seed: int = typer.Option(-1),
    batch: int = typer.Option(1),
    lora: list[str] = typer.Option([], help="CODE or CODE:WEIGHT"),
    out: Path = typer.Option(Path("out"), help="where the PNGs are saved"),
    watch_preview: Path | None = typer.Option(None, help="save the live previews in this folder"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the task"),
):
    """Sign and send a GenerateImagesSDXL request to any PICPIK endpoint, follow it, and save the images.

    Exit codes: 0 finished, 1 the task failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    from picserve.cli.watch import Followed
    from picserve.sdk import Client
    from picserve.sdk.types import GenerateImagesSDXLParams

    params: GenerateImagesSDXLParams = {
        "MainModel": {"ModelCode": model, "InferenceParams": {"Steps": steps, "Sampler": sampler, "CFGScale": cfg}},
        "PositivePrompts": [prompt],
        "Width": width,
        "Height": height,
        "BatchSize": batch,
        "Seed": seed,
    }
    if negative:
        params["NegativePrompts"] = [negative]
    if lora:
        params["SubModelList"] = [lora_ref(item) for item in lora]
    with Client(url, public_key, private_key) as client:
        uid = client_call(lambda: client.generate_images_sdxl(**params))
        typer.echo(f"task {uid}", err=True)
        (detail,) = follow(client, [Followed(uid, steps=steps)], timeout, watch_preview)
        for index, (image_url, image_seed) in enumerate(zip(detail["ImgList"], detail["SeedList"], strict=True)):
            path = client_call(functools.partial(client.download, image_url, out / f"{uid}-{index}.png"))
            typer.echo(f"{path}  seed={image_seed}")


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

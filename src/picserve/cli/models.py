"""`picserve models`: the models folder (list, add, inspect, the tiny model, translation models)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from picserve.cli.common import ModelsDir, load_settings

models_app = typer.Typer(help="The models folder.", no_args_is_help=True)


@models_app.command("make-tiny")
def models_make_tiny(
    models_dir: Path | None = ModelsDir, overwrite: bool = typer.Option(False, help="rebuild even if present")
):
    """Write the tiny random SDXL (single file + diffusers folder) into models/main/."""
    from picserve.engine import tiny

    settings = load_settings(models_dir=models_dir)
    for path in tiny.write_model(settings.models_dir, overwrite=overwrite):
        typer.echo(str(path))


@models_app.command("pull-translation")
def models_pull_translation(
    languages: list[str] = typer.Argument(..., help="source languages, e.g. zh ja fr"),
    models_dir: Path | None = ModelsDir,
    index_url: str | None = typer.Option(None, help="Argos package index URL"),
    from_english: bool = typer.Option(
        False, "--from-english", help="en→LANG models instead (DescribeImages' TranslateDescription)"
    ),
):
    """Download and install LANG→en translation models, or en→LANG ones (needs internet; the service never
    downloads)."""
    from picserve import errors
    from picserve.translate import pull

    settings = load_settings(models_dir=models_dir, translation_index_url=index_url)
    try:
        index = settings.translation_index_url or pull.DEFAULT_INDEX
        for folder in pull.pull(languages, settings.translation_dir, index, from_english=from_english):
            typer.echo(f"installed {folder}")
    except errors.PullError as exc:
        typer.echo(f"pull-translation failed: {exc.message}", err=True)
        raise typer.Exit(1) from None


@models_app.command("list")
def models_list(models_dir: Path | None = ModelsDir):
    """Show what the models folder holds, as ListModels would."""
    from picserve import catalog

    cat = catalog.Catalog.of(load_settings(models_dir=models_dir))
    for kind in catalog.KINDS:
        for code, entry in cat.entries(kind).items():
            typer.echo(f"{kind:13} {code:32} {entry.path}")


@models_app.command("add")
def models_add(
    source: str = typer.Argument(
        ..., metavar="URL|PATH", help="http(s) URL, local file, or a model folder (SAM, a captioner, a tagger)"
    ),
    sha256: str | None = typer.Option(None, "--sha256", help="refuse the file unless its SHA-256 is this"),
    name: str | None = typer.Option(None, "--name", help="ModelCode [the file's name]"),
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="main, lora, embedding, hypernetwork, vae, upscale, background, inpaint, controlnet, faces, "
        "facedetect, segment, caption [from its tensors]",
    ),
    force: bool = typer.Option(
        False, "--force", help="replace a model of the same name; file one that will not load as it is (warned)"
    ),
    retries: int = typer.Option(3, "--retries", help="resumes after a dropped connection"),
    models_dir: Path | None = ModelsDir,
):
    """Download (resumable) or copy a model file, check it, and file it in the models folder by its tensors
    (an upscaler, an eraser such as LaMa, a face model or an ONNX segmentation model or face detector: by
    what spandrel, onnxruntime or OpenCV makes of it). A folder (SAM, a captioner, a tagger) is copied
    whole, by what transformers or onnxruntime makes of it."""
    from picserve import errors, modelfiles, modelfolders
    from picserve.engine import toolfiles

    settings = load_settings(models_dir=models_dir)
    try:
        if Path(source).expanduser().is_dir():
            if sha256:
                raise errors.PullError("--sha256 checks a file; a folder has none to check")
            added = modelfolders.add(
                Path(source), settings.models_dir, identify=toolfiles.identify, name=name, kind=kind, force=force
            )
        else:
            added = modelfiles.add(
                source,
                settings.models_dir,
                sha256=sha256,
                name=name,
                kind=kind,
                force=force,
                retries=retries,
                identify=toolfiles.identify,
            )
    except errors.PullError as exc:
        typer.echo(f"models add: {exc.message}", err=True)
        raise typer.Exit(1) from None
    for warning in added.warnings:
        typer.echo(f"models add: warning: {warning}", err=True)
    typer.echo(modelfiles.summary(added))
    typer.echo(str(added.path))


@models_app.command("info")
def models_info(
    file: Path = typer.Argument(..., help="a model file, or a model folder"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
):
    """What a model file is, by its tensors: kind, base, layout, rank, dtypes, trigger words, sha256; an
    upscaler's architecture and scale, an eraser's architecture, an ONNX segmentation model's inputs."""
    from picserve import modelfiles, modelfolders
    from picserve.engine import toolfiles

    if file.is_dir():
        found = modelfolders.inspect(file, toolfiles.identify)
    else:
        found = modelfiles.identified(modelfiles.inspect_file(file), toolfiles.identify, file.name)
    refusal = modelfiles.unfit(found, None)
    if as_json:
        typer.echo(json.dumps({**found.to_json(), "refused": refusal}))
    else:
        for label, value in modelfiles.describe(found):
            typer.echo(f"{label:13} {value}")
        if refusal:
            typer.echo(f"{'refused':13} {refusal}")
    if found.problem:
        raise typer.Exit(1)

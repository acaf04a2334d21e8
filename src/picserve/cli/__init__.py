"""The `picserve` command: parses flags, builds Settings, calls the runtime or the SDK. No logic here.

Every option can also be set with its `PICSERVE_*` variable (e.g. `--data-dir` ↔ PICSERVE_DATA_DIR).

One module per command group: service (serve, worker, workers, demo), generate, tools (upscale,
remove-background, restyle), toolkit (restore-faces, extract, describe, background), edit (inpaint,
outpaint, erase), controlnets (generate's --controlnet, and controlnets), tasks, keys, models, db;
common holds what they share, watch follows tasks for generate and `tasks wait`. Each module imports
what a command needs inside it, so that `picserve --help` starts without torch, the API or the worker.
"""

from __future__ import annotations

import typer

from picserve import errors
from picserve.cli import controlnets, db, edit, generate, keys, models, service, tasks, toolkit, tools

__all__ = ["app", "main"]

app = typer.Typer(
    help="Self-hosted SDXL behind the PICPIK API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from picserve import __version__

        typer.echo(f"picserve {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print picserve's version and exit"
    ),
) -> None:
    """Self-hosted SDXL behind the PICPIK API."""


# in this order in --help: the commands, then the groups
app.command()(service.serve)
app.command()(service.worker)
app.command()(service.workers)
app.command()(generate.generate)
app.command()(tools.upscale)
app.command("remove-background")(tools.remove_background)
app.command()(tools.restyle)
app.command("restore-faces")(toolkit.restore_faces)
app.command()(toolkit.extract)
app.command()(toolkit.describe)
app.command()(toolkit.background)
app.command()(controlnets.controlnets)
app.command()(service.demo)
app.add_typer(edit.edit_app, name="edit")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(models.models_app, name="models")
app.add_typer(db.db_app, name="db")
app.add_typer(tasks.tasks_app, name="tasks")


def main() -> None:
    try:
        app()
    except (errors.ClusterVersionMismatch, errors.DatabaseAdminError) as exc:
        # an operator's error with what to do in its message: that message alone, no traceback
        typer.echo(f"picserve: {exc.message}", err=True)
        raise SystemExit(1) from None

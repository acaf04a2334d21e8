"""`picserve db`: picserve's migrations of the database's tables."""

from __future__ import annotations

from pathlib import Path

import typer

from picserve.cli.common import DatabaseUrl, DataDir, load_settings, with_connection

db_app = typer.Typer(help="The database's tables: picserve's migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Apply the pending migrations (serve and worker also do when they start); prints each one applied."""
    from picserve.tasks import database

    applied = with_connection(load_settings(data_dir=data_dir, database_url=database_url), database.upgrade_schema)
    for label in applied:
        typer.echo(f"applied {label}")
    if not applied:
        typer.echo("up to date")


@db_app.command("status")
def db_status(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Each migration with the time it was applied, or `pending`; changes nothing."""
    from picserve.tasks import migrations

    for item in with_connection(load_settings(data_dir=data_dir, database_url=database_url), migrations.status):
        if item.applied_at is not None:
            state = item.applied_at.isoformat(sep=" ", timespec="seconds")
        else:
            state = "pending" if item.pending else "present, not recorded (first release; recorded on upgrade)"
        typer.echo(f"{item.version:04d}  {item.name:24}  {state}")

"""`picserve db`: the database itself: picserve's migrations, the embedded cluster's PostgreSQL major
upgrade, backups and restores (the work is in tasks/pgupgrade.py and tasks/backup.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from picserve.cli.common import DatabaseUrl, DataDir, ModelsDir, load_settings, with_connection

db_app = typer.Typer(help="The database: migrations, PostgreSQL upgrades, backups and restores.", no_args_is_help=True)

OldBindir = typer.Option(
    None,
    "--old-bindir",
    help="the bin folder of the PostgreSQL major the data folder's cluster was made with "
    "[/usr/lib/postgresql/OLD/bin, else PATH's pg_config]",
)


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl, old_bindir: Path | None = OldBindir
):
    """Bring the database up to this release: an embedded cluster of an older PostgreSQL major is upgraded
    to this one first (pg_upgrade, copying: the old cluster is kept beside it, renamed, until you delete it),
    then picserve's pending migrations are applied (serve and worker also apply those when they start).
    Prints each step. An external database (--database-url) gets the migrations only: its PostgreSQL is
    upgraded by whoever runs that server."""
    from picserve.tasks import database, pgupgrade

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    upgraded = None
    if settings.database_url is None:
        upgraded = pgupgrade.upgrade(settings.pg_dir, old_bindir, typer.echo)
    elif old_bindir is not None:
        typer.echo("an external database: its PostgreSQL is its operator's to upgrade; applying picserve's migrations")
    applied = with_connection(settings, database.upgrade_schema)
    for label in applied:
        typer.echo(f"applied {label}")
    if not applied:
        typer.echo("migrations: up to date")
    if upgraded is not None:
        with_connection(settings, pgupgrade.analyze)
        typer.echo("planner statistics gathered (ANALYZE)")


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


@db_app.command("backup")
def db_backup(
    file: Path = typer.Argument(..., help="the backup to write (pg_dump's custom format), replaced if it exists"),
    data_dir: Path | None = DataDir,
    models_dir: Path | None = ModelsDir,
    database_url: str | None = DatabaseUrl,
):
    """Back up the database (every key, balance and task) into FILE, from one snapshot: safe while the
    service runs. The private keys in it are sealed with the server secret, which it names: keep the two
    together. The results and models folders are files: copy them as such."""
    from picserve.tasks import backup

    settings = load_settings(data_dir=data_dir, models_dir=models_dir, database_url=database_url)
    backup.backup(settings, file, typer.echo)


@db_app.command("restore")
def db_restore(
    file: Path = typer.Argument(..., help="a backup written by `picserve db backup`"),
    force: bool = typer.Option(
        False, "--force", help="replace the picserve tables the database holds already (else refused)"
    ),
    data_dir: Path | None = DataDir,
    models_dir: Path | None = ModelsDir,
    database_url: str | None = DatabaseUrl,
):
    """Restore FILE into a fresh data folder (its embedded database is made) or an empty external
    database, in one transaction, then apply picserve's migrations (a backup of an older release comes up
    to this one) and check that the keys open with this server's secret. Put the secret kept with the
    backup in place first (the data folder's secret.key, or PICSERVE_SECRET_KEY). Stop picserve first."""
    from picserve.tasks import backup

    settings = load_settings(data_dir=data_dir, models_dir=models_dir, database_url=database_url)
    backup.restore(settings, file, typer.echo, force=force)

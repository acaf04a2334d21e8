"""What several commands share: the common options, Settings (with logging set up), the database (a
repository or one plain connection), and SDK calls whose failures become a message and an exit code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from picserve import logs
from picserve.config import Settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from picserve.tasks.repository import TaskRepository

T = TypeVar("T")

DataDir = typer.Option(None, "--data-dir", help="database, results, caches [./data]")
ModelsDir = typer.Option(None, "--models-dir", help="main/, lora/, embedding/, hypernetwork/ [./models]")
DatabaseUrl = typer.Option(None, "--database-url", help="external PostgreSQL; unset = embedded")

Url = typer.Option("http://127.0.0.1:8080", envvar="PICSERVE_URL", help="the PICPIK endpoint")
PublicKey = typer.Option(..., envvar="PICSERVE_PUBLIC_KEY")
PrivateKey = typer.Option(..., envvar="PICSERVE_PRIVATE_KEY")


def load_settings(**flags: Any) -> Settings:
    settings = Settings.load(**flags)
    logs.configure(settings.log_level, settings.log_format)
    # psycopg.pool logs every failed connection attempt during a database outage: its errors are enough
    for chatty in ("httpx", "procrastinate.blueprints", "psycopg.pool"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


def with_repo(settings: Settings, action: Callable[[TaskRepository], Awaitable[T]]) -> T:
    """Run `action` on the key and task repository of `settings`' database (embedded or external)."""
    from picserve import keycipher
    from picserve.tasks import database, embedded_pg

    cipher = keycipher.load(settings)

    async def run(url: str) -> T:
        async with database.open_database(url, max_size=2, cipher=cipher) as db:
            return await action(db.repo)

    with embedded_pg.database(settings) as url:
        return asyncio.run(run(url))


def with_connection(settings: Settings, action: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run `action` on one plain connection to `settings`' database, which it finds as it is."""
    import psycopg

    from picserve.tasks import embedded_pg, migrations

    async def run(url: str) -> T:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await action(conn)

    with embedded_pg.database(settings) as url:
        try:
            return asyncio.run(run(url))
        except (psycopg.OperationalError, migrations.MigrationError) as exc:
            typer.echo(f"database: {exc}", err=True)
            raise typer.Exit(1) from None


def client_call(call: Callable[[], T]) -> T:
    """An SDK call; a refusal or an unreachable server is a message on stderr and its exit code."""
    from picserve import errors
    from picserve.cli import watch

    try:
        return call()
    except errors.WaitTimeout as exc:
        typer.echo(f"timed out: {exc.message}", err=True)
        raise typer.Exit(watch.EXIT_TIMEOUT) from None
    except errors.SDKError as exc:
        typer.echo(f"unreachable: {exc.message}", err=True)
        raise typer.Exit(watch.EXIT_UNREACHABLE) from None
    except errors.PicserveError as exc:
        typer.echo(f"refused (RetCode {exc.ret_code}): {exc.message}", err=True)
        raise typer.Exit(watch.EXIT_REFUSED) from None


def follow(client: Any, tasks: list[Any], timeout: float, preview_dir: Path | None) -> list[Any]:
    """Follow `tasks` to their end (watch.follow); exit 1 when one failed or was cancelled."""
    from picserve.cli import watch

    details = client_call(lambda: watch.follow(client, tasks, timeout=timeout, preview_dir=preview_dir))
    failed = [d for d in details if d["Status"] != "Finished"]
    for detail in failed:
        typer.echo(f"task {detail['TaskUID']} ended {detail['Status']}: {detail['ErrorMassage']}", err=True)
    if failed:
        raise typer.Exit(watch.EXIT_ERROR)
    return details

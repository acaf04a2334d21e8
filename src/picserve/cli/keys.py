"""`picserve keys`: API keys (stored in the database), their credits, limits, scheduling and webhook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from picserve.cli.common import DatabaseUrl, DataDir, load_settings, with_repo

if TYPE_CHECKING:
    from picserve.tasks.repository import TaskRepository

keys_app = typer.Typer(help="API keys (stored in the database).", no_args_is_help=True)

MaxOpenTasks = typer.Option(
    None, "--max-open-tasks", help="queued + running tasks this key may have: a number (0 = no cap) or 'default'"
)
MaxRequestsPerMinute = typer.Option(
    None, "--max-requests-per-minute", help="requests per minute this key may send: a number (0 = none) or 'default'"
)


def _limit(option: str, given: str | None, current: int | None) -> int | None:
    """A limit flag's value: None when not given (keep `current`), 'default' → None (the server's)."""
    if given is None:
        return current
    if given.strip().lower() == "default":
        return None
    try:
        value = int(given)
    except ValueError:
        value = -1
    if value < 0:
        raise typer.BadParameter(f"a number ≥ 0 or 'default' (got {given!r})", param_hint=option)
    return value


@keys_app.command("create")
def keys_create(
    name: str = typer.Option("", help="a label for the key"),
    credits: int | None = typer.Option(None, help="credits granted [1000]"),
    max_open_tasks: str | None = MaxOpenTasks,
    max_requests_per_minute: str | None = MaxRequestsPerMinute,
    admin: bool = typer.Option(False, "--admin", help="an operator's key: may send admin actions (ImportModel)"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Create a key pair; prints {"PublicKey": …, "PrivateKey": …, "WebhookSecret": "whsec_…"} (the only
    time the private key is shown; the webhook secret verifies the key's webhooks, see `webhook-secret`)."""
    from picserve.webhooks import signing

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    amount = settings.default_credits if credits is None else credits
    open_cap = _limit("--max-open-tasks", max_open_tasks, None)
    rate = _limit("--max-requests-per-minute", max_requests_per_minute, None)
    account = with_repo(settings, lambda repo: repo.create_key(name, amount, open_cap, rate, admin))
    secret = signing.standard_secret(account.private_key)
    typer.echo(
        json.dumps({"PublicKey": account.public_key, "PrivateKey": account.private_key, "WebhookSecret": secret})
    )


@keys_app.command("webhook-secret")
def keys_webhook_secret(public_key: str, data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Print the key's webhook secret (whsec_…): what a Standard Webhooks receiver verifies its deliveries
    with. It is derived one way from the private key, which it does not reveal."""
    from picserve.webhooks import signing

    async def secret_of(repo: TaskRepository) -> str | None:
        account = await repo.get_account(public_key)
        return None if account is None else signing.standard_secret(account.private_key)

    secret = with_repo(load_settings(data_dir=data_dir, database_url=database_url), secret_of)
    if secret is None:
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)
    typer.echo(secret)


@keys_app.command("update")
def keys_update(
    public_key: str,
    max_open_tasks: str | None = MaxOpenTasks,
    max_requests_per_minute: str | None = MaxRequestsPerMinute,
    priority: int | None = typer.Option(None, help="served before every key of a lower priority [0]"),
    weight: float | None = typer.Option(
        None, help="a number > 0: share among keys of equal priority (running tasks ÷ weight) [1]"
    ),
    webhook_url: str | None = typer.Option(
        None, help="the webhook of this key's tasks whose request names none (event: completed); 'none' clears it"
    ),
    admin: bool | None = typer.Option(
        None, "--admin/--no-admin", help="make it an operator's key (admin actions: ImportModel), or an ordinary one"
    ),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Change a key's limits, scheduling, default webhook and admin right; they apply from its next request (limits,
    webhook) or the next fetch of a worker (priority, weight), on every node."""
    if weight is not None and not 0 < weight < float("inf"):
        raise typer.BadParameter(f"a number > 0 (got {weight!r})", param_hint="--weight")
    clear_webhook = webhook_url is not None and webhook_url.strip().lower() == "none"
    if webhook_url is not None and not clear_webhook:
        from picserve import errors
        from picserve.webhooks import rules

        try:  # its address is checked when each delivery is made (PICSERVE_WEBHOOK_ALLOW)
            rules.check_syntax(webhook_url, "--webhook-url")
        except errors.ParamError as exc:
            raise typer.BadParameter(exc.message.removeprefix("--webhook-url: "), param_hint="--webhook-url") from None
    settings = load_settings(data_dir=data_dir, database_url=database_url)

    async def update(repo: TaskRepository) -> bool:
        account = await repo.get_account(public_key)
        if account is None:
            return False
        open_cap = _limit("--max-open-tasks", max_open_tasks, account.max_open_tasks)
        rate = _limit("--max-requests-per-minute", max_requests_per_minute, account.max_requests_per_minute)
        if priority is not None or weight is not None:
            await repo.set_scheduling(
                public_key,
                account.priority if priority is None else priority,
                account.weight if weight is None else weight,
            )
        if webhook_url is not None:
            await repo.set_webhook(public_key, None if clear_webhook else webhook_url)
        if admin is not None:
            await repo.set_admin(public_key, admin)
        return await repo.set_limits(public_key, open_cap, rate)

    if not with_repo(settings, update):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)
    typer.echo(f"updated {public_key}")


@keys_app.command("list")
def keys_list(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """List keys with their credits and limits (private keys are never shown; null = the server's limit)."""
    accounts = with_repo(load_settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.list_keys())
    for a in accounts:
        typer.echo(
            json.dumps(
                {
                    "PublicKey": a.public_key,
                    "Name": a.name,
                    "TotalCredits": a.total_credits,
                    "UsedCredits": a.used_credits,
                    "Revoked": a.revoked,
                    "MaxOpenTasks": a.max_open_tasks,
                    "MaxRequestsPerMinute": a.max_requests_per_minute,
                    "Priority": a.priority,
                    "Weight": a.weight,
                    "WebhookUrl": a.webhook_url,
                    "Admin": a.admin,
                }
            )
        )


@keys_app.command("rotate-secret")
def keys_rotate_secret(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Re-seal every stored private key under a new server secret.

    With the data folder's secret.key, the new secret is written first in it and the previous one kept
    second (processes using the file pick it up by themselves). With PICSERVE_SECRET_KEY, the new value
    to set on every process that reads keys is printed.
    """
    from picserve import keycipher
    from picserve.tasks import database, embedded_pg

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    current = keycipher.load(settings)
    rotated = keycipher.KeyCipher([keycipher.new_secret(), current.secrets[0]])

    async def reseal(url: str) -> int:
        async with database.open_database(url, max_size=2, cipher=current) as db:
            return await db.repo.reseal_keys(rotated)

    with embedded_pg.database(settings) as url:
        if current.source is not None:  # the file first: a crash after it leaves every key readable
            keycipher.write_secrets(current.source, rotated.secrets)
        count = asyncio.run(reseal(url))
    if current.source is not None:
        typer.echo(f"re-sealed {count} keys; {current.source} holds the new secret (the previous one kept second)")
    else:
        typer.echo(f"re-sealed {count} keys; set on every API node and key command, then restart them:")
        typer.echo(f"PICSERVE_SECRET_KEY={','.join(rotated.secrets)}")


@keys_app.command("revoke")
def keys_revoke(public_key: str, data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Revoke a key: its requests are refused from now on."""
    if not with_repo(
        load_settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.revoke_key(public_key)
    ):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {public_key}")


@keys_app.command("add-credits")
def keys_add_credits(
    public_key: str, credits: int, data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl
):
    """Grant more credits to a key."""
    if not with_repo(
        load_settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.add_credits(public_key, credits)
    ):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)

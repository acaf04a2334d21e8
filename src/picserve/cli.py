"""The `picserve` command: parses flags, builds Settings, calls the runtime or the SDK. No logic here.

Every option can also be set with its `PICSERVE_*` variable (e.g. `--data-dir` ↔ PICSERVE_DATA_DIR).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from picserve import logs
from picserve.config import Settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from picserve.sdk.types import ModelRef
    from picserve.tasks.repository import TaskRepository

T = TypeVar("T")

app = typer.Typer(
    help="Self-hosted SDXL behind the PICPIK API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(help="API keys (stored in the database).", no_args_is_help=True)
models_app = typer.Typer(help="The models folder.", no_args_is_help=True)
db_app = typer.Typer(help="The database's tables: picserve's migrations.", no_args_is_help=True)
tasks_app = typer.Typer(
    help="Tasks: follow, show, cancel (a client, through the API); list (the operator, from the database).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(tasks_app, name="tasks")

DataDir = typer.Option(None, "--data-dir", help="database, results, caches [./data]")
ModelsDir = typer.Option(None, "--models-dir", help="main/, lora/, embedding/, hypernetwork/ [./models]")
DatabaseUrl = typer.Option(None, "--database-url", help="external PostgreSQL; unset = embedded")


def _settings(**flags: Any) -> Settings:
    settings = Settings.load(**flags)
    logs.configure(settings.log_level, settings.log_format)
    # psycopg.pool logs every failed connection attempt during a database outage: its errors are enough
    for chatty in ("httpx", "procrastinate.blueprints", "psycopg.pool"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


Preload = typer.Option(
    None,
    "--preload",
    metavar="CODE",
    help="main model loaded before the worker takes jobs (repeat it, or comma-separate codes) [PICSERVE_PRELOAD]",
)


def _memory(used: int, budget: int | None, total: int | None) -> str:
    """A worker's model memory: `6.9 GiB/48.0 GiB of 80.0 GiB` (used/budget of the device's whole)."""
    from picserve.admission import shown

    text = shown(used) + ("" if budget is None else f"/{shown(budget)}")
    return text + ("" if total is None else f" of {shown(total)}")


def _in_ram(models: tuple[str, ...], used: int) -> str:
    """A worker's RAM tier: `sdxl-a,sdxl-b (13.9 GiB)`, or `-`."""
    from picserve.admission import shown

    return f"{','.join(models)} ({shown(used)})" if models else "-"


def _codes(values: list[str] | None) -> str | None:
    """Repeated and comma-separated model codes as one comma-separated setting (None: none given)."""
    codes = [code.strip() for value in values or () for code in value.split(",") if code.strip()]
    return ",".join(codes) or None


@app.command()
def serve(
    host: str | None = typer.Option(None, help="[127.0.0.1]"),
    port: int | None = typer.Option(None, help="[8080]"),
    data_dir: Path | None = DataDir,
    models_dir: Path | None = ModelsDir,
    workers: int | None = typer.Option(None, help="workers run beside the API [1]"),
    database_url: str | None = DatabaseUrl,
    device: str | None = typer.Option(None, help="worker device: auto, cpu, cuda:N [auto]"),
    public_url: str | None = typer.Option(None, help="base of result URLs [the request's own base URL]"),
    preload: list[str] | None = Preload,
):
    """Run the API and its workers in the foreground."""
    from picserve import supervisor

    supervisor.serve(
        _settings(
            host=host,
            port=port,
            data_dir=data_dir,
            models_dir=models_dir,
            workers=workers,
            database_url=database_url,
            device=device,
            public_url=public_url,
            preload=_codes(preload),
        )
    )


@app.command()
def worker(
    data_dir: Path | None = DataDir,
    models_dir: Path | None = ModelsDir,
    database_url: str | None = DatabaseUrl,
    device: str | None = typer.Option(None, help="auto, cpu, cuda:N (one worker per GPU) [auto]"),
    name: str | None = typer.Option(None, help="worker name in logs and task records"),
    burst: bool = typer.Option(False, help="exit once the queue is empty"),
    metrics_port: int | None = typer.Option(None, help="serve Prometheus metrics on this port [0: none]"),
    preload: list[str] | None = Preload,
    supervisor_pid: int | None = typer.Option(None, hidden=True, help="set by `serve`: stop when that process dies"),
):
    """Run one worker (one per GPU at scale) against the shared database.

    Exits with code 75 when its device broke (a sticky CUDA error): its task went back to the queue and
    the registry marks it unhealthy; start it again (as `serve` does)."""
    from picserve import supervisor

    if supervisor_pid is not None:  # first of all: a worker of `serve` must not outlive it
        supervisor.die_with_parent(supervisor_pid)
    from picserve.tasks.jobs import DeviceFailure
    from picserve.tasks.worker import run_worker

    settings = _settings(
        data_dir=data_dir,
        models_dir=models_dir,
        database_url=database_url,
        device=device,
        worker_metrics_port=metrics_port,
        preload=_codes(preload),
    )
    try:
        with supervisor.database(settings) as url:
            asyncio.run(run_worker(settings, url, name, burst=burst))
    except DeviceFailure as exc:
        typer.echo(f"picserve worker: the device is unusable ({exc}); exiting to be restarted", err=True)
        raise typer.Exit(DeviceFailure.exit_code) from None


@app.command()
def workers(
    as_json: bool = typer.Option(False, "--json", help="one JSON object per worker and line"),
    everyone: bool = typer.Option(False, "--all", help="also the workers no longer heard from (not yet aged out)"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """List the live workers of the fleet: device, dtype, the models they hold, their counts, their task,
    and why an unhealthy one stopped (shown until it is aged out or restarted)."""
    import psycopg

    from picserve.tasks import registry

    settings = _settings(data_dir=data_dir, database_url=database_url)
    try:
        found = _with_connection(settings, lambda conn: registry.list_workers(conn, settings.stalled_after, everyone))
    except psycopg.errors.UndefinedTable:
        typer.echo("database: no worker registry yet (`picserve db upgrade` makes it; so does any worker)", err=True)
        raise typer.Exit(1) from None
    if as_json:
        for info in found:
            typer.echo(json.dumps(info.to_json()))
        return
    header = (
        "NAME", "DEVICE", "GPU", "DTYPE", "MODELS", "IN RAM", "MODEL MEMORY", "LORAS", "LOADS", "DONE",
        "CURRENT TASK", "LAST HEARTBEAT", "LIVE", "UNHEALTHY",
    )  # fmt: skip
    rows = [
        (
            w.name,
            w.device,
            w.gpu or "-",
            w.dtype or "-",
            ",".join(w.main_models) or "-",
            _in_ram(w.host_models, w.host_bytes),
            _memory(w.model_bytes, w.model_memory, w.memory_total),
            str(len(w.loras)),
            str(w.model_loads),
            str(w.tasks_done),
            w.current_task or "-",
            w.last_heartbeat.isoformat(timespec="seconds"),
            "yes" if w.live else "no",
            w.unhealthy or "-",
        )
        for w in found
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _with_repo(settings: Settings, action: Callable[[TaskRepository], Awaitable[T]]) -> T:
    """Run `action` on the key and task repository of `settings`' database (embedded or external)."""
    from picserve import keycipher, supervisor
    from picserve.tasks import database

    cipher = keycipher.load(settings)

    async def run(url: str) -> T:
        async with database.open_database(url, max_size=2, cipher=cipher) as db:
            return await action(db.repo)

    with supervisor.database(settings) as url:
        return asyncio.run(run(url))


def _with_connection(settings: Settings, action: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run `action` on one plain connection to `settings`' database, which it finds as it is."""
    import psycopg

    from picserve import supervisor
    from picserve.tasks import migrations

    async def run(url: str) -> T:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await action(conn)

    with supervisor.database(settings) as url:
        try:
            return asyncio.run(run(url))
        except (psycopg.OperationalError, migrations.MigrationError) as exc:
            typer.echo(f"database: {exc}", err=True)
            raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Apply the pending migrations (serve and worker also do when they start); prints each one applied."""
    from picserve.tasks import database

    applied = _with_connection(_settings(data_dir=data_dir, database_url=database_url), database.upgrade_schema)
    for label in applied:
        typer.echo(f"applied {label}")
    if not applied:
        typer.echo("up to date")


@db_app.command("status")
def db_status(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """Each migration with the time it was applied, or `pending`; changes nothing."""
    from picserve.tasks import migrations

    for item in _with_connection(_settings(data_dir=data_dir, database_url=database_url), migrations.status):
        if item.applied_at is not None:
            state = item.applied_at.isoformat(sep=" ", timespec="seconds")
        else:
            state = "pending" if item.pending else "present, not recorded (first release; recorded on upgrade)"
        typer.echo(f"{item.version:04d}  {item.name:24}  {state}")


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
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Create a key pair; prints {"PublicKey": …, "PrivateKey": …} (the only time the private key is shown)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    amount = settings.default_credits if credits is None else credits
    open_cap = _limit("--max-open-tasks", max_open_tasks, None)
    rate = _limit("--max-requests-per-minute", max_requests_per_minute, None)
    account = _with_repo(settings, lambda repo: repo.create_key(name, amount, open_cap, rate))
    typer.echo(json.dumps({"PublicKey": account.public_key, "PrivateKey": account.private_key}))


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
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Change a key's limits, scheduling and default webhook; they apply from its next request (limits,
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
    settings = _settings(data_dir=data_dir, database_url=database_url)

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
        return await repo.set_limits(public_key, open_cap, rate)

    if not _with_repo(settings, update):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)
    typer.echo(f"updated {public_key}")


@keys_app.command("list")
def keys_list(data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl):
    """List keys with their credits and limits (private keys are never shown; null = the server's limit)."""
    accounts = _with_repo(_settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.list_keys())
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
    from picserve import keycipher, supervisor
    from picserve.tasks import database

    settings = _settings(data_dir=data_dir, database_url=database_url)
    current = keycipher.load(settings)
    rotated = keycipher.KeyCipher([keycipher.new_secret(), current.secrets[0]])

    async def reseal(url: str) -> int:
        async with database.open_database(url, max_size=2, cipher=current) as db:
            return await db.repo.reseal_keys(rotated)

    with supervisor.database(settings) as url:
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
    if not _with_repo(
        _settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.revoke_key(public_key)
    ):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {public_key}")


@keys_app.command("add-credits")
def keys_add_credits(
    public_key: str, credits: int, data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl
):
    """Grant more credits to a key."""
    if not _with_repo(
        _settings(data_dir=data_dir, database_url=database_url), lambda repo: repo.add_credits(public_key, credits)
    ):
        typer.echo(f"no key {public_key}", err=True)
        raise typer.Exit(1)


@models_app.command("make-tiny")
def models_make_tiny(
    models_dir: Path | None = ModelsDir, overwrite: bool = typer.Option(False, help="rebuild even if present")
):
    """Write the tiny random SDXL (single file + diffusers folder) into models/main/."""
    from picserve.engine import tiny

    settings = _settings(models_dir=models_dir)
    for path in tiny.write_model(settings.models_dir, overwrite=overwrite):
        typer.echo(str(path))


@models_app.command("pull-translation")
def models_pull_translation(
    languages: list[str] = typer.Argument(..., help="source languages, e.g. zh ja fr"),
    models_dir: Path | None = ModelsDir,
    index_url: str | None = typer.Option(None, help="Argos package index URL"),
):
    """Download and install LANG→en translation models (needs internet; the service never downloads)."""
    from picserve import errors
    from picserve.translate import pull

    settings = _settings(models_dir=models_dir, translation_index_url=index_url)
    try:
        for folder in pull.pull(
            languages, settings.translation_dir, settings.translation_index_url or pull.DEFAULT_INDEX
        ):
            typer.echo(f"installed {folder}")
    except errors.PullError as exc:
        typer.echo(f"pull-translation failed: {exc.message}", err=True)
        raise typer.Exit(1) from None


@models_app.command("list")
def models_list(models_dir: Path | None = ModelsDir):
    """Show what the models folder holds, as ListModels would."""
    from picserve import catalog

    cat = catalog.Catalog.of(_settings(models_dir=models_dir))
    for kind in catalog.KINDS:
        for code, entry in cat.entries(kind).items():
            typer.echo(f"{kind:13} {code:32} {entry.path}")


@models_app.command("add")
def models_add(
    source: str = typer.Argument(..., metavar="URL|PATH", help="http(s) URL or local file"),
    sha256: str | None = typer.Option(None, "--sha256", help="refuse the file unless its SHA-256 is this"),
    name: str | None = typer.Option(None, "--name", help="ModelCode [the file's name]"),
    kind: str | None = typer.Option(None, "--kind", help="main, lora, embedding, hypernetwork, vae [from its tensors]"),
    force: bool = typer.Option(False, "--force", help="replace a model of the same name"),
    retries: int = typer.Option(3, "--retries", help="resumes after a dropped connection"),
    models_dir: Path | None = ModelsDir,
):
    """Download (resumable) or copy a model file, check it, and file it in the models folder by its tensors."""
    from picserve import errors, modelfiles

    settings = _settings(models_dir=models_dir)
    try:
        added = modelfiles.add(
            source, settings.models_dir, sha256=sha256, name=name, kind=kind, force=force, retries=retries
        )
    except errors.PullError as exc:
        typer.echo(f"models add: {exc.message}", err=True)
        raise typer.Exit(1) from None
    for warning in added.warnings:
        typer.echo(f"models add: warning: {warning}", err=True)
    found = added.inspection
    layout = f" {'/'.join(found.layout)}" if found.layout else ""
    typer.echo(f"{added.kind} {added.code}: {found.base}{layout}, sha256 {found.sha256}")
    typer.echo(str(added.path))


@models_app.command("info")
def models_info(
    file: Path = typer.Argument(..., help="a model file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
):
    """What a model file is, by its tensors: kind, base, layout, rank, dtypes, trigger words, sha256."""
    from picserve import modelfiles

    found = modelfiles.inspect_file(file)
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


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="positive prompt"),
    url: str = typer.Option("http://127.0.0.1:8080", envvar="PICSERVE_URL", help="the PICPIK endpoint"),
    public_key: str = typer.Option(..., envvar="PICSERVE_PUBLIC_KEY"),
    private_key: str = typer.Option(..., envvar="PICSERVE_PRIVATE_KEY"),
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
    from picserve.sdk import Client
    from picserve.sdk.types import GenerateImagesSDXLParams
    from picserve.watch import Followed

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
        uid = _client_call(lambda: client.generate_images_sdxl(**params))
        typer.echo(f"task {uid}", err=True)
        (detail,) = _follow(client, [Followed(uid, steps=steps)], timeout, watch_preview)
        for index, (image_url, image_seed) in enumerate(zip(detail["ImgList"], detail["SeedList"], strict=True)):
            path = _client_call(functools.partial(client.download, image_url, out / f"{uid}-{index}.png"))
            typer.echo(f"{path}  seed={image_seed}")


def _client_call(call: Callable[[], T]) -> T:
    """An SDK call; a refusal or an unreachable server is a message on stderr and its exit code."""
    from picserve import errors, watch

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


def _follow(client: Any, tasks: list[Any], timeout: float, preview_dir: Path | None) -> list[Any]:
    """Follow `tasks` to their end (watch.follow); exit 1 when one failed or was cancelled."""
    from picserve import watch

    details = _client_call(lambda: watch.follow(client, tasks, timeout=timeout, preview_dir=preview_dir))
    failed = [d for d in details if d["Status"] != "Finished"]
    for detail in failed:
        typer.echo(f"task {detail['TaskUID']} ended {detail['Status']}: {detail['ErrorMassage']}", err=True)
    if failed:
        raise typer.Exit(watch.EXIT_ERROR)
    return details


Url = typer.Option("http://127.0.0.1:8080", envvar="PICSERVE_URL", help="the PICPIK endpoint")
PublicKey = typer.Option(..., envvar="PICSERVE_PUBLIC_KEY")
PrivateKey = typer.Option(..., envvar="PICSERVE_PRIVATE_KEY")


@tasks_app.command("wait")
def tasks_wait(
    task_uids: list[str] = typer.Argument(..., help="TaskUIDs of this key"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    timeout: float = typer.Option(600.0, help="seconds to wait"),
    watch_preview: Path | None = typer.Option(None, help="save the live previews in this folder"),
):
    """Follow tasks until they end (queue position, progress, previews).

    Exit codes: 0 all finished, 1 one failed or was cancelled, 2 refused, 3 unreachable, 4 timed out.
    """
    from picserve.sdk import Client
    from picserve.watch import Followed

    with Client(url, public_key, private_key) as client:
        details = _follow(client, [Followed(uid) for uid in task_uids], timeout, watch_preview)
    for detail in details:
        typer.echo(" ".join([detail["TaskUID"], detail["Status"], *detail["ImgList"]]))


@tasks_app.command("show")
def tasks_show(
    task_uids: list[str] = typer.Argument(..., help="TaskUIDs of this key"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
    as_json: bool = typer.Option(False, "--json", help="one TaskDetail JSON object per line"),
):
    """Show tasks as ListTasksDetails has them (PreviewImage left out of the text form)."""
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        details = _client_call(lambda: client.list_tasks_details(task_uids))
    found = {d["TaskUID"] for d in details}
    for detail in details:
        if as_json:
            typer.echo(json.dumps(detail))
            continue
        where = f" #{detail['QueuePosition']} in the queue" if "QueuePosition" in detail else ""
        typer.echo(f"{detail['TaskUID']}  {detail['Status']}{where}  progress {detail['Progress']:.0%}")
        for image_url in detail["ImgList"]:
            typer.echo(f"  {image_url}")
        if detail["ErrorCode"]:
            typer.echo(f"  error {detail['ErrorCode']}: {detail['ErrorMassage']}")
    missing = [uid for uid in task_uids if uid not in found]
    if missing:
        typer.echo(f"not tasks of this key: {', '.join(missing)}", err=True)
        raise typer.Exit(1)


@tasks_app.command("cancel")
def tasks_cancel(
    task_uids: list[str] = typer.Argument(..., help="TaskUIDs of this key"),
    url: str = Url,
    public_key: str = PublicKey,
    private_key: str = PrivateKey,
):
    """Cancel tasks (CancelTask): a queued one never runs, a running one stops at its next step."""
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        _client_call(lambda: client.cancel_task(task_uids))
    typer.echo(f"cancel requested: {' '.join(task_uids)}")


@tasks_app.command("list")
def tasks_list(
    status: list[str] = typer.Option([], help="Queuing, Running, Finished, Error, Canceled (repeatable)"),
    key: str | None = typer.Option(None, help="only this public key's"),
    model: str | None = typer.Option(None, help="only this main model's"),
    limit: int = typer.Option(50, help="the newest N"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per task and line"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Every key's tasks, newest first, from the database (the operator's view)."""
    from picserve import domain

    wanted = []
    for name in status:
        try:
            wanted.append(domain.TaskStatus(name))
        except ValueError:
            names = ", ".join(s.value for s in domain.TaskStatus)
            raise typer.BadParameter(f"one of {names}", param_hint="--status") from None
    settings = _settings(data_dir=data_dir, database_url=database_url)
    tasks = _with_repo(settings, lambda repo: repo.list_tasks(wanted, key, model, limit))
    for task in tasks:
        row = {
            "TaskUID": task.task_uid,
            "Status": task.status.value,
            "PublicKey": task.public_key,
            "Model": task.spec.model_code,
            "Size": f"{task.spec.width}x{task.spec.height}",
            "Steps": task.spec.steps,
            "BatchSize": task.spec.batch_size,
            "Worker": task.worker,
            "Progress": round(task.progress, 4),
            "Created": task.created_at.isoformat() if task.created_at else None,
            "Finished": task.finished_at.isoformat() if task.finished_at else None,
            "ErrorCode": task.error_code,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(
                f"{row['TaskUID']}  {row['Status']:<8}  {row['Model']}  {row['Size']}×{row['Steps']}  "
                f"key {task.public_key[:12]}…  {row['Created']}  {task.worker or ''}"
            )


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


@app.command()
def demo(
    data_dir: Path | None = DataDir,
    models_dir: Path | None = ModelsDir,
    model: str | None = typer.Option(None, help="ModelCode [the tiny model, made if missing]"),
    prompt: str = typer.Option("a photo of a cat sitting on a red sofa, masterpiece"),
    width: int = typer.Option(512),
    height: int = typer.Option(512),
    steps: int = typer.Option(10),
    batch: int = typer.Option(1),
    seed: int = typer.Option(-1),
    out: Path = typer.Option(Path("out"), help="where the PNGs are saved"),
):
    """Start the service, generate through the SDK, save the PNGs, print paths and seed, stop."""
    from picserve import demo as demo_module

    settings = _settings(data_dir=data_dir, models_dir=models_dir)
    for line in demo_module.run(
        settings, model=model, prompt=prompt, width=width, height=height, steps=steps, batch=batch, seed=seed, out=out
    ):
        typer.echo(line)


def main() -> None:
    app()

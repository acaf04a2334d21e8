"""Running the service: `serve` (the API and its workers), `worker` (one of them), `workers` (the fleet's
registry), `demo` (serve, generate, stop). Registered on the root app in picserve/cli/__init__.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from picserve.cli.common import DatabaseUrl, DataDir, ModelsDir, load_settings, with_connection

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
    access_log: bool | None = typer.Option(
        None, "--access-log/--no-access-log", help="uvicorn's line per HTTP request [only at PICSERVE_LOG_LEVEL=debug]"
    ),
):
    """Run the API and its workers in the foreground.

    The log has a line per refused request (action, key, RetCode, message); accepted ones, polls
    included, are logged at debug level only."""
    from picserve import supervisor

    supervisor.serve(
        load_settings(
            host=host,
            port=port,
            data_dir=data_dir,
            models_dir=models_dir,
            workers=workers,
            database_url=database_url,
            device=device,
            public_url=public_url,
            preload=_codes(preload),
        ),
        access_log=access_log,
    )


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

    Exits with code 75 when its device broke (a sticky CUDA error) or its engine hung past a run's
    deadline: its task went back to the queue and the registry marks it unhealthy; start it again (as
    `serve` does)."""
    from picserve import supervisor

    if supervisor_pid is not None:  # first of all: a worker of `serve` must not outlive it
        supervisor.die_with_parent(supervisor_pid)
    from picserve.tasks import embedded_pg
    from picserve.worker.jobs import DeviceFailure
    from picserve.worker.process import run_worker

    settings = load_settings(
        data_dir=data_dir,
        models_dir=models_dir,
        database_url=database_url,
        device=device,
        worker_metrics_port=metrics_port,
        preload=_codes(preload),
    )
    try:
        with embedded_pg.database(settings) as url:
            asyncio.run(run_worker(settings, url, name, burst=burst))
    except DeviceFailure as exc:
        typer.echo(f"picserve worker: the device is unusable ({exc}); exiting to be restarted", err=True)
        # (a hung engine thread is a daemon: it does not hold the exit)
        raise typer.Exit(DeviceFailure.exit_code) from None


def workers(
    as_json: bool = typer.Option(False, "--json", help="one JSON object per worker and line"),
    everyone: bool = typer.Option(False, "--all", help="also the workers no longer heard from (not yet aged out)"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """List the live workers of the fleet: device, dtype, the models they hold, their counts, their task,
    and why an unhealthy one stopped (shown until it is aged out or restarted)."""
    import psycopg

    from picserve.tasks import workers

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    try:
        found = with_connection(settings, lambda conn: workers.list_workers(conn, settings.stalled_after, everyone))
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

    settings = load_settings(data_dir=data_dir, models_dir=models_dir)
    for line in demo_module.run(
        settings, model=model, prompt=prompt, width=width, height=height, steps=steps, batch=batch, seed=seed, out=out
    ):
        typer.echo(line)

"""`picserve tasks`: follow, show, cancel (a client, through the API); list (the operator, from the database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from picserve.cli.common import (
    DatabaseUrl,
    DataDir,
    PrivateKey,
    PublicKey,
    Url,
    client_call,
    follow,
    load_settings,
    with_repo,
)

if TYPE_CHECKING:
    from picserve.domain import TaskRecord
    from picserve.tasks.repository import TaskRepository

tasks_app = typer.Typer(
    help="Tasks: follow, show, cancel (a client, through the API); list (the operator, from the database).",
    no_args_is_help=True,
)


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
    from picserve.cli.watch import Followed
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        details = follow(client, [Followed(uid) for uid in task_uids], timeout, watch_preview)
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
    """Show tasks as ListTasksDetails has them (PreviewImage left out of the text form).

    Exit codes: 0 none failed, 1 one ended in Error or Canceled (or is not this key's), 2 refused,
    3 unreachable.
    """
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        details = client_call(lambda: client.list_tasks_details(task_uids))
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
    failed = [d for d in details if d["Status"] in ("Error", "Canceled")]
    for detail in failed:
        typer.echo(f"task {detail['TaskUID']} ended {detail['Status']}: {detail['ErrorMassage']}", err=True)
    if missing or failed:
        raise typer.Exit(1)


@tasks_app.command("cancel")
def tasks_cancel(
    task_uids: list[str] = typer.Argument(..., help="TaskUIDs of this key (with --operator: of any key)"),
    url: str = Url,
    public_key: str | None = typer.Option(None, envvar="PICSERVE_PUBLIC_KEY"),
    private_key: str | None = typer.Option(None, envvar="PICSERVE_PRIVATE_KEY"),
    operator: bool = typer.Option(
        False, "--operator", help="cancel any key's tasks, in the database itself (the operator's; no keys)"
    ),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Cancel tasks: a queued one never runs, a running one stops at its next step.

    A client cancels its own key's tasks through the API (CancelTask); the operator cancels any key's
    with --operator, in the database (--data-dir or --database-url, as `tasks list`). A task that has
    already ended is left as it is, and said so (nothing to do: exit code 0 too).
    Exit codes: 0 done, 1 (--operator) a TaskUID is unknown, 2 refused (e.g. not this key's task),
    3 unreachable.
    """
    if operator:
        ended, unknown, open_uids = _cancel_in_database(task_uids, data_dir, database_url)
    else:
        if not public_key or not private_key:
            raise typer.BadParameter(
                "give --public-key and --private-key (or PICSERVE_PUBLIC_KEY and PICSERVE_PRIVATE_KEY); "
                "an operator cancels any key's task with --operator",
                param_hint="--public-key/--private-key",
            )
        ended, open_uids = _cancel_through_the_api(task_uids, url, public_key, private_key)
        unknown = []
    for uid, status in ended.items():
        typer.echo(f"{uid}: already ended ({status}), nothing to cancel")
    if open_uids:
        typer.echo(f"cancel requested: {' '.join(open_uids)}")
    if unknown:
        typer.echo(f"no such task: {', '.join(unknown)}", err=True)
        raise typer.Exit(1)


def _cancel_through_the_api(
    task_uids: list[str], url: str, public_key: str, private_key: str
) -> tuple[dict[str, str], list[str]]:
    """CancelTask for the tasks of this key that have not ended; (ended ones by status, those asked)."""
    from picserve import domain
    from picserve.sdk import Client

    with Client(url, public_key, private_key) as client:
        details = client_call(lambda: client.list_tasks_details(task_uids))
        ended = {d["TaskUID"]: str(d["Status"]) for d in details if domain.TaskStatus(d["Status"]).is_terminal}
        open_uids = [uid for uid in dict.fromkeys(task_uids) if uid not in ended]
        if open_uids:
            client_call(lambda: client.cancel_task(open_uids))
    return ended, open_uids


def _cancel_in_database(
    task_uids: list[str], data_dir: Path | None, database_url: str | None
) -> tuple[dict[str, str], list[str], list[str]]:
    """Cancel any key's tasks in the database; (ended ones by status, unknown ones, those asked)."""
    settings = load_settings(data_dir=data_dir, database_url=database_url)

    async def cancel(repo: TaskRepository) -> tuple[dict[str, str], list[str], list[str]]:
        ended: dict[str, str] = {}
        unknown: list[str] = []
        asked: list[str] = []
        for uid in dict.fromkeys(task_uids):
            found = await repo.run_of(uid)
            if found is None:
                unknown.append(uid)
            elif found[0].is_terminal:
                ended[uid] = found[0].value
            else:
                await repo.request_cancel(uid)
                asked.append(uid)
        return ended, unknown, asked

    return with_repo(settings, cancel)


@tasks_app.command("list")
def tasks_list(
    status: list[str] = typer.Option([], help="Queuing, Running, Finished, Error, Canceled (any case; repeatable)"),
    key: str | None = typer.Option(None, help="only this public key's"),
    model: str | None = typer.Option(None, help="only this main model's"),
    limit: int = typer.Option(50, help="the newest N"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per task and line"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """Every key's tasks, newest first, from the database (the operator's view)."""
    from picserve import domain

    by_name = {s.value.lower(): s for s in domain.TaskStatus}
    wanted = []
    for name in status:
        if name.strip().lower() not in by_name:
            names = ", ".join(s.value for s in domain.TaskStatus)
            raise typer.BadParameter(f"{name!r}: one of {names} (any case)", param_hint="--status")
        wanted.append(by_name[name.strip().lower()])
    settings = load_settings(data_dir=data_dir, database_url=database_url)
    tasks = with_repo(settings, lambda repo: repo.list_tasks(wanted, key, model, limit))
    rows = [_list_row(task) for task in tasks]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    header = ("TASK", "STATUS", "MODEL", "SIZE", "STEPS", "IMAGES", "KEY", "CREATED", "WORKER", "ERROR")
    cells = [
        (
            row["TaskUID"],
            row["Status"],
            row["Model"],
            row["Size"] or "-",
            "-" if row["Steps"] is None else str(row["Steps"]),
            "-" if row["BatchSize"] is None else str(row["BatchSize"]),
            f"{row['PublicKey'][:12]}…",
            task.created_at.isoformat(sep=" ", timespec="seconds") if task.created_at else "-",
            row["Worker"] or "-",
            str(row["ErrorCode"]) if row["ErrorCode"] else "-",
        )
        for task, row in zip(tasks, rows, strict=True)
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *cells, strict=True)]
    for line in (header, *cells):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if not rows:
        typer.echo("(no tasks)", err=True)


def _list_row(task: TaskRecord) -> dict[str, Any]:
    """One task of `tasks list` as its JSON object (the text table shows the same fields)."""
    from picserve import domain

    spec = task.spec
    size: str | None = None
    steps = batch_size = None
    if isinstance(spec, domain.GenerationSpec):
        size, steps, batch_size = f"{spec.width}x{spec.height}", spec.steps, spec.batch_size
    return {
        "TaskUID": task.task_uid,
        "Status": task.status.value,
        "PublicKey": task.public_key,
        "Model": spec.needs().model_code or spec.kind,
        "Size": size,
        "Steps": steps,
        "BatchSize": batch_size,
        "Worker": task.worker,
        "Progress": round(task.progress, 4),
        "Created": task.created_at.isoformat() if task.created_at else None,
        "Finished": task.finished_at.isoformat() if task.finished_at else None,
        "ErrorCode": task.error_code,
    }


@tasks_app.command("runs")
def tasks_runs(
    task_uid: str = typer.Argument(..., help="a TaskUID (any key's)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per run and line"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
):
    """A task's ended runs from the database: each attempt's worker, times and how it ended (finished,
    failed, canceled, requeued by a stopping worker; or lost: lost, device_lost, timed_out)."""
    settings = load_settings(data_dir=data_dir, database_url=database_url)
    runs = with_repo(settings, lambda repo: repo.runs_of(task_uid))
    if not runs:
        typer.echo(f"no ended runs of task {task_uid}", err=True)
        raise typer.Exit(1)
    for run in runs:
        row = {
            "TaskUID": run.task_uid,
            "Attempt": run.attempt,
            "Worker": run.worker,
            "Started": run.started_at.isoformat() if run.started_at else None,
            "Ended": run.ended_at.isoformat(),
            "EndedAs": run.ended_as.value,
            "Detail": run.detail,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            loss = "  (a loss)" if run.ended_as.is_loss else ""
            detail = f": {run.detail}" if run.detail else ""
            typer.echo(f"#{run.attempt}  {run.ended_as.value}{loss}  {run.worker or '-'}  {row['Ended']}{detail}")

"""`picserve tasks`: follow, show, cancel (a client, through the API); list (the operator, from the database)."""

from __future__ import annotations

import json
from pathlib import Path

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
    """Show tasks as ListTasksDetails has them (PreviewImage left out of the text form)."""
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
        client_call(lambda: client.cancel_task(task_uids))
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
    settings = load_settings(data_dir=data_dir, database_url=database_url)
    tasks = with_repo(settings, lambda repo: repo.list_tasks(wanted, key, model, limit))
    for task in tasks:
        spec = task.spec
        size: str | None = None
        steps = batch_size = None
        if isinstance(spec, domain.GenerationSpec):
            size, steps, batch_size = f"{spec.width}x{spec.height}", spec.steps, spec.batch_size
        row = {
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
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(
                f"{row['TaskUID']}  {row['Status']:<8}  {row['Model']}  {row['Size']}×{row['Steps']}  "
                f"key {task.public_key[:12]}…  {row['Created']}  {task.worker or ''}"
            )

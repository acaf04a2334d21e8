"""Following tasks from the command line: queue position, progress with steps and ETA, live previews.

`follow(client, tasks)` polls ListTasksDetails (one request for all the tasks) until every task has
ended. On a terminal it draws a rich progress bar per task (status or queue position, steps done,
time left); otherwise (a pipe, a log file, a test) it prints one line per change of a task's state:
its status, its queue position, and its progress in steps of 10%. With `preview_dir`, every new
`PreviewImage` of a task is saved there as `<TaskUID>-preview-<n>.jpg`.

Exit codes of the commands built on it (`picserve generate`, `picserve tasks wait`), for scripts:
0 every task finished; 1 a task ended in Error or Canceled; 2 the request was refused (a non-zero
RetCode) or the command line was wrong; 3 the server could not be reached; 4 still not ended when
the timeout came.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from picserve import domain, errors
from picserve.sdk import Client
from picserve.sdk.types import TaskDetail

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_REFUSED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "Followed", "follow"]

EXIT_OK, EXIT_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


@dataclass
class Followed:
    """One task followed: its steps (for "k/N steps"), what was last shown, previews saved."""

    uid: str
    steps: int | None = None
    detail: TaskDetail | None = None
    shown: tuple[str, int | None, int] | None = None  # (status, queue position, progress tenths)
    previews: list[Path] = field(default_factory=list)
    bar: TaskID | None = None


def follow(
    client: Client,
    tasks: Sequence[Followed],
    timeout: float = 600.0,
    poll: float = 0.5,
    preview_dir: Path | None = None,
    console: Console | None = None,
) -> list[TaskDetail]:
    """Poll until every task has ended; their last TaskDetails, in order. Raises errors.WaitTimeout."""
    console = console or Console(stderr=True)
    deadline = time.monotonic() + timeout
    progress = _bars(console) if console.is_terminal else None
    if progress is not None:
        progress.start()
        for task in tasks:
            task.bar = progress.add_task(task.uid, total=1.0)
    try:
        while True:
            by_uid = {d["TaskUID"]: d for d in client.list_tasks_details([t.uid for t in tasks])}
            for task in tasks:
                detail = by_uid.get(task.uid)
                if detail is None:
                    continue
                task.detail = detail
                if preview_dir is not None:
                    _save_preview(task, detail, preview_dir)
                if progress is not None and task.bar is not None:
                    progress.update(task.bar, completed=detail["Progress"], description=_label(task, detail))
                else:
                    _print_change(console, task, detail)
            if all(t.detail is not None and domain.TaskStatus(t.detail["Status"]).is_terminal for t in tasks):
                return [t.detail for t in tasks if t.detail is not None]
            if time.monotonic() > deadline:
                open_ones = [t.uid for t in tasks if t.detail is None or not _ended(t.detail)]
                raise errors.WaitTimeout(f"tasks {', '.join(open_ones)} not ended after {timeout:g} s")
            time.sleep(poll)
    finally:
        if progress is not None:
            progress.stop()


def _ended(detail: TaskDetail) -> bool:
    return domain.TaskStatus(detail["Status"]).is_terminal


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=console,
    )


def _label(task: Followed, detail: TaskDetail) -> str:
    """`<uid> Queuing #3`, `<uid> Running 8/20 steps`, `<uid> Finished`."""
    status = detail["Status"]
    if status == "Queuing" and "QueuePosition" in detail:
        return f"{task.uid} Queuing #{detail['QueuePosition']}"
    if status == "Running" and task.steps:
        return f"{task.uid} Running {round(detail['Progress'] * task.steps)}/{task.steps} steps"
    return f"{task.uid} {status}"


def _print_change(console: Console, task: Followed, detail: TaskDetail) -> None:
    state = (detail["Status"], detail.get("QueuePosition"), int(detail["Progress"] * 10))
    if state == task.shown:
        return
    task.shown = state
    label = _label(task, detail)
    if detail["Status"] == "Running":
        label += f" {detail['Progress']:.0%}"
    if detail["Status"] in ("Error", "Canceled") and detail["ErrorMassage"]:
        label += f": {detail['ErrorMassage']}"
    console.print(label, highlight=False, soft_wrap=True)


def _save_preview(task: Followed, detail: TaskDetail, folder: Path) -> None:
    uri = detail.get("PreviewImage")
    if not uri or (task.previews and task.previews[-1].read_bytes() == _decoded(uri)):
        return
    data = _decoded(uri)
    if data:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{task.uid}-preview-{len(task.previews) + 1:03d}.jpg"
        path.write_bytes(data)
        task.previews.append(path)


def _decoded(uri: str) -> bytes:
    try:
        return base64.b64decode(uri.partition(",")[2], validate=True)
    except (binascii.Error, ValueError):
        return b""

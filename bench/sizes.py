"""Peak memory and time per output size on the tiny SDXL (or any model: --model CODE --models-dir DIR).

Each size runs in a fresh process so peak RSS is that size's own. Results go to stdout as a Markdown
table; docs/performance.md keeps the measured numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(models_dir: str, model: str, size: int, steps: int) -> dict:
    from picserve import catalog, domain
    from picserve.engine.engine import Engine

    engine = Engine(catalog.Catalog(Path(models_dir)), device="auto", cache_dir=Path(models_dir) / ".cache")
    spec = domain.GenerationSpec(
        model_code=model, prompt="a photo of a cat", width=size, height=size, steps=steps, seed=1
    )
    engine.generate(spec.evolve(width=64, height=64, steps=1))  # load the model and warm up
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    engine.generate(spec)
    return {
        "size": size,
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "after_load_mb": round(baseline),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--model", default="picserve-tiny")
    parser.add_argument("--sizes", default="512,1024,1536,2048,2560")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.models_dir, args.model, args.one, args.steps)))
        return
    if args.model == "picserve-tiny":
        from picserve.engine import tiny

        tiny.write_model(Path(args.models_dir))
    print("| size | steps | seconds | peak RSS (MB) | RSS after load (MB) |\n|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--models-dir",
                args.models_dir,
                "--model",
                args.model,
                "--steps",
                str(args.steps),
                "--one",
                str(size),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            print(f"| {size} | {args.steps} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['size']}×{r['size']} | {r['steps']} | {r['seconds']} | {r['peak_rss_mb']} | {r['after_load_mb']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

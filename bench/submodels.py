"""How long sub-model switches take next to reloading the main model (tiny SDXL, or --model on a GPU host).

Times only the switch itself (what a request pays before denoising), median of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from picserve import catalog, domain
from picserve.domain import SubModel


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default=None, help="default: a temporary folder with the tiny model")
    parser.add_argument("--model", default="picserve-tiny")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from picserve.engine import engine as engine_module
    from picserve.engine import tiny
    from picserve.engine import tiny_submodels as subs

    root = Path(args.models_dir or tempfile.mkdtemp(prefix="picserve-bench-"))
    if args.model == tiny.TINY_CODE:
        tiny.write_model(root)
        for i in range(2):
            subs.write_lora_kohya(root / "lora", f"bench-lora-{i}", seed=i)
        subs.write_embedding(root / "embedding", "bench-emb", vectors=2)
        subs.write_hypernetwork(root / "hypernetwork", "bench-hyper")
    engine = engine_module.Engine(catalog.Catalog(root), cache_dir=root / ".cache")
    model = engine.pipelines.get(args.model)
    adapters = engine.adapters

    def switch(*subs_):
        with adapters.applied(model, tuple(subs_)):
            pass

    a, b = SubModel("lora", "bench-lora-0"), SubModel("lora", "bench-lora-1")
    switch(a), switch(b)  # both loaded once: what follows is the steady state

    def reload_main():
        engine.pipelines._pipes.clear()
        engine.pipelines.get(args.model)

    def cold_lora():
        adapters._file_contents.clear()
        model.base.delete_adapters(list(model.loras))
        model.loras.clear()
        switch(a)

    rows = [
        ("reload the main model (from its file)", timed(reload_main, args.repeat)),
        ("load a LoRA from disk (cold)", timed(cold_lora, args.repeat)),
    ]
    model = engine.pipelines.get(args.model)
    switch(a), switch(b)
    rows += [
        ("switch LoRA A → B (both loaded)", timed(lambda: (switch(a), switch(b)), args.repeat) / 2),
        ("change a LoRA's weight", timed(lambda: switch(SubModel("lora", "bench-lora-0", 0.3)), args.repeat)),
        (
            "two LoRAs 0.7 / 0.3",
            timed(
                lambda: switch(SubModel("lora", "bench-lora-0", 0.7), SubModel("lora", "bench-lora-1", 0.3)),
                args.repeat,
            ),
        ),
        ("back to no LoRA (base output)", timed(lambda: switch(), args.repeat)),
        ("embedding load + unload (2 vectors)", timed(lambda: switch(SubModel("embedding", "bench-emb")), args.repeat)),
        ("hypernetwork apply + restore", timed(lambda: switch(SubModel("hypernetwork", "bench-hyper")), args.repeat)),
    ]
    spec = domain.GenerationSpec(model_code=args.model, prompt="a cat", width=64, height=64, steps=6, seed=1)
    engine.generate(spec)
    rows.append(("for scale: one 64×64, 6-step generation", timed(lambda: engine.generate(spec), args.repeat)))
    print(f"| operation ({args.model}) | median ms |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.1f} |")


if __name__ == "__main__":
    main()

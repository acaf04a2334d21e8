"""Switching sub-models does not leak: RSS stays flat while requests cycle through them."""

import itertools

import psutil

from picserve import catalog, domain
from picserve.domain import SubModel
from picserve.engine import tiny
from picserve.engine.engine import Engine

#: requests in all: after the first two rounds (12), 88 more of the same cycle must leave RSS where it was
REQUESTS = 100
LORAS = ["kohya-0", "kohya-1", "kohya-2", "kohya-3", "peft-0"]


def combinations():
    """Different LoRA sets (one, two, none), embeddings in prompts and the hypernetwork, in a cycle."""
    combos = []
    for i, code in enumerate(LORAS):
        subs = [SubModel("lora", code, 0.8)]
        if i % 2:
            subs.append(SubModel("lora", LORAS[(i + 2) % 5], -0.3))
        if i % 3 == 0:
            subs.append(SubModel("hypernetwork", "hyper-a", 0.7))
        emb = ["emb-a", "emb-b"][i % 2]
        subs.append(SubModel("embedding", emb))
        combos.append((f"{emb}, a photo of a cat", tuple(subs)))
    combos.append(("a photo of a cat", ()))
    return combos


def test_100_requests_cycling_sub_models_keep_rss_flat(models_dir, config_cache, capsys):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache)
    process = psutil.Process()
    cycle = combinations()
    spec = domain.GenerationSpec(model_code=tiny.TINY_CODE, prompt="", width=64, height=64, steps=2, seed=1)
    rss = []
    for n, (prompt, subs) in zip(range(REQUESTS), itertools.cycle(cycle)):
        engine.generate(spec.evolve(prompt=prompt, sub_models=subs, seed=n))
        if n == len(cycle) * 2 - 1:  # after two full rounds everything has been loaded once
            rss.append(process.memory_info().rss)
    rss.append(process.memory_info().rss)
    growth = (rss[-1] - rss[0]) / rss[0]
    with capsys.disabled():  # the measurement belongs in the CI log
        print(  # noqa: T201
            f"\nRSS after the first rounds {rss[0] / 2**20:.0f} MB, after {REQUESTS} requests {rss[-1] / 2**20:.0f} MB "
            f"({growth:+.2%})"
        )
    assert growth < 0.05

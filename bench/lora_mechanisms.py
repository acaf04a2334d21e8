"""LoRA-like files: PEFT adapters (diffusers' loader) against weight patching (engine/lora/lycoris.py).

    .venv/bin/python bench/lora_mechanisms.py [--size 128] [--repeat 20]

On the tiny SDXL (or any UNet it builds: CPU here), with lycoris-written files (tests/engine/lycoris_files.py):
one plain LoRA on every linear layer (rank 4), which both mechanisms can apply, and a LoHa,
which only patching can. It reports, median of --repeat:

- the UNet forward at --size² (one denoising step of one image, CFG off): base, with the PEFT adapter
  active, with the weights patched;
- applying the file: PEFT `load_lora_weights` (first time), `set_adapters` (switching between two
  loaded adapters), patching (`Patcher.apply`), switching between two patched files, restoring the base;
- whether diffusers' loader takes a LoHa at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' lycoris writer

import torch  # noqa: E402
from bench.submodels import timed as median_seconds  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tests.engine import lycoris_files  # noqa: E402

from picserve.engine import tiny  # noqa: E402
from picserve.engine.lora import lycoris  # noqa: E402


def timed(setup, action, repeat: int) -> float:
    """Median seconds of `action`, each run after an untimed `setup`."""
    runs = []
    for _ in range(repeat):
        setup()
        start = time.perf_counter()
        action()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latents: size / 8)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="picserve-bench-lycoris-"))
    files = {}
    for code, variant, seed in (("a", "locon", 1), ("b", "locon", 2), ("loha", "loha", 3)):
        path, _ = lycoris_files.write(variant, folder, code, seed=seed)
        state = load_file(str(path))
        if variant == "locon":  # its linear layers only: a plain LoRA, which diffusers' loader takes too
            convs = {k.partition(".")[0] for k, v in state.items() if k.endswith("lora_down.weight") and v.ndim == 4}
            state = {k: v for k, v in state.items() if k.partition(".")[0] not in convs}
        files[code] = state

    pipe = tiny.build_pipeline()
    unet = pipe.unet
    side = args.size // 8
    latents = torch.randn(1, unet.config.in_channels, side, side)
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    added = {
        "text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim),
        "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]], dtype=torch.float32),
    }

    def step() -> None:
        with torch.inference_mode():
            unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs=added)

    rows: list[tuple[str, float]] = []
    rows.append(("UNet step, base", median_seconds(step, args.repeat)))

    patcher = lycoris.Patcher(pipe)

    def patch(code: str) -> None:
        patcher.apply([(code, files[code], 1.0)])

    rows.append(("patch: apply a LoRA", timed(patcher.restore, lambda: patch("a"), 5)))
    rows.append(("UNet step, patched LoRA", median_seconds(step, args.repeat)))
    rows.append(("patch: switch LoRA a → b (restore + apply)", timed(lambda: patch("a"), lambda: patch("b"), 5)))
    rows.append(("patch: restore the base", timed(lambda: patch("a"), patcher.restore, 5)))
    rows.append(("patch: apply a LoHa", timed(patcher.restore, lambda: patch("loha"), 5)))
    patcher.restore()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        pipe.load_lora_weights(dict(files["a"]), adapter_name="a")
        rows.append(("PEFT: load_lora_weights", time.perf_counter() - start))
        pipe.load_lora_weights(dict(files["b"]), adapter_name="b")
        pipe.set_adapters(["a"], adapter_weights=[1.0])
        rows.append(("UNet step, PEFT adapter active", median_seconds(step, args.repeat)))

        def adapter(code: str) -> None:
            pipe.set_adapters([code], adapter_weights=[1.0])

        rows.append(("PEFT: set_adapters a → b", timed(lambda: adapter("a"), lambda: adapter("b"), 5)))
        try:
            pipe.load_lora_weights(dict(files["loha"]), adapter_name="loha")
            loha = "loaded"
        except Exception as exc:  # what diffusers says of a LoHa
            loha = f"refused: {str(exc).splitlines()[0][:120]}"

    print(
        f"tiny SDXL, UNet at {args.size}² (latents {side}²), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print()
    print("| what | ms |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.1f} |")
    print()
    print(f"diffusers load_lora_weights of a LoHa: {loha}")


if __name__ == "__main__":
    main()

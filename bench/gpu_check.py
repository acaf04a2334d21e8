"""What only a GPU can show about fp16 serving (issue 29), checked in one run: PASS, FAIL or SKIP each.

    .venv/bin/python bench/gpu_check.py --out gpu-check.json                   # CUDA: full-size SDXL, fp16
    .venv/bin/python bench/gpu_check.py --vae /path/to/sdxl-vae-fp16-fix.safetensors
    .venv/bin/python bench/gpu_check.py --tiny --dtype float16 --out c.json    # anywhere: the tiny SDXL

The model is SDXL base's architecture with random weights (bench/sdxl.py's `build`), exported as a
single-file checkpoint into a temporary models folder and served by a real `Engine` (the compute dtype
from `--dtype`, default auto: `loader.resolve_dtype`, fp16 on CUDA). `--tiny` uses the tiny SDXL of
`picserve.engine.tiny` instead, at 64² by default, so that the script runs on a CPU in seconds (`--dtype
float16` runs the fp16 paths there); checks that need CUDA then SKIP with the reason. The checks:

- `dtypes`: txt2img, then img2img, then inpaint (their pipelines derived with `from_pipe`): after each,
  every module of the loaded model (unet, vae, text_encoder, text_encoder_2) is in the compute dtype
  on the device, and the memory its weights take did not grow (CUDA: `memory_allocated`; CPU: the
  bytes of the distinct storages of every pipeline of the model) by half a model or more. The dtype
  each VAE decode ran in is reported (fp32 when diffusers upcasts an fp16 `force_upcast` VAE).
- `vae`: one image at 1024² (`--tiny`: --size) per VAE: the model's own, and with `--vae PATH` an
  operator's VAE file installed in models/vae and named by a main model's sidecar (`--tiny`: the tiny
  VAE exported as such a file). No NaN/Inf out of any VAE decode, the image not uniformly black. Every
  decode is recorded (its input dtype, whether its output is finite), so an engine that re-decodes in
  fp32 after a NaN shows it, as does its error. With random weights an fp16 VAE may overflow where a
  trained one does not: the figures say what happened.
- `ram_tier`: two main models, a device budget that holds one: the first goes to the RAM tier and
  comes back. The page-locked host memory that took (the loader's block for the model, plus whatever
  torch's pinned cache grew by, `torch.cuda.host_memory_stats`) against the model's counted bytes: at
  least those and at most 2% more; the block let go once the model is back; the RSS, the kernel's
  VmPin, the restore time, and the restored model's image bit for bit the first's.
- `compiled_hot_swap`: an Engine whose UNet is compiled in CUDA-graph mode ("reduce-overhead", for
  --size only) with 2 LoRA hot-swap slots of rank 32, warmed up; then no LoRA, LoRA A, LoRA B, no LoRA:
  dynamo compiles nothing more (run under `fail_on_recompile`, its graph counter unchanged), every
  UNet call went to the compiled forward, A and B change the image and differ, and the last image is
  the first bit for bit. Needs CUDA; on the CPU `--cpu-compile` runs it with dynamo's eager backend
  (the hot-swap without CUDA graphs).
- `gpu0_from_cuda1` (2 GPUs or more): a worker process on cuda:1 generates once; the memory it took on
  GPU 0 (`torch.cuda.mem_get_info(0)` in this process before and while it holds; per process with
  pynvml when installed). A process that touches cuda:0 leaves a CUDA context there (~300-500 MB).

Prints one line per check with its figures, writes them all to `--out` (JSON), exits 1 when one FAILs.
`--checks` runs some of them; `--work-dir` keeps the models folder (else temporary); `--tiny-models DIR`
links the tiny SDXL from a models folder that has it (the tests'), instead of writing it again.
tests/engine/test_bench_gpu_check.py runs the `--tiny --dtype float16` variant on the CPU.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picserve.engine import loader, precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sdxl import build, decode_dtype, lora_state  # bench/sdxl.py: full-size SDXL, random weights

#: the main model's code in the temporary models folder (full size; --tiny: tiny.TINY_CODE)
FULL_CODE = "sdxl-random"
#: the operator's VAE's code in models/vae
OPERATOR_VAE = "operator-vae"
#: the LoRAs of the compiled_hot_swap check, in models/lora
LORAS = ("lora-a", "lora-b")
#: the modules of an SDXL pipeline that hold weights
MODULES = precision.COMPONENTS
PROMPT = "a photo of a lighthouse at dusk"


@dataclasses.dataclass
class Setup:
    """What every check runs against: the temporary models folder and how to generate."""

    args: argparse.Namespace
    root: Path
    device: torch.device
    dtype: torch.dtype
    #: the main model, the same file under a second code (the RAM tier check), and per VAE label the
    #: main model code that decodes with it
    code: str
    second: str
    vaes: dict[str, str]
    #: the engine the checks share unless they need switches of their own (see `shared`)
    _shared: Any = None

    @property
    def size(self) -> int:
        return int(self.args.size)

    def loras(self) -> tuple[str, str]:
        """The codes of LoRAs A and B in models/lora (full size: written with the model; --tiny: kohya
        files written at the first call)."""
        from picserve.engine import tiny_submodels

        for index, code in enumerate(LORAS):
            if not (self.root / "models" / "lora" / f"{code}.safetensors").exists():
                tiny_submodels.write_lora_kohya(self.root / "models" / "lora", code, seed=index)
        return LORAS

    def shared(self) -> Any:
        """One engine for the checks that need no switch of their own, as a worker serves one request
        after another (a RAM tier of half the machine's memory, used once the ram_tier check sets a
        device budget)."""
        import psutil

        if self._shared is None:
            self._shared = self.engine(host_budget=psutil.virtual_memory().total // 2)
        return self._shared

    def close_shared(self) -> None:
        """The shared engine's models out of memory (room for an engine of a check's own)."""
        self._shared = None
        release(self.device)

    def catalog(self) -> Any:
        from picserve import catalog

        return catalog.Catalog(self.root / "models", ttl=0)

    def engine(self, **options: Any) -> Any:
        from picserve.engine.engine import Engine

        return Engine(
            self.catalog(), device=str(self.device), dtype=self.dtype, cache_dir=self.root / "cache", **options
        )

    def spec(self, **fields: Any) -> Any:
        from picserve import domain

        base = {"model_code": self.code, "prompt": PROMPT, "width": self.size, "height": self.size}
        return domain.GenerationSpec(**{**base, "steps": self.args.steps, "seed": 1, **fields})


# --- the models folder ----------------------------------------------------------------------------------
def write_models(args: argparse.Namespace, root: Path, device: torch.device) -> tuple[str, str, dict[str, str]]:
    """The main model (and its second code, and a code per VAE) and two LoRAs, into root/models."""
    from safetensors.torch import save_file

    from picserve.engine import checkpoint, tiny

    models = root / "models"
    (models / "lora").mkdir(parents=True, exist_ok=True)
    vae_file = Path(args.vae).resolve() if args.vae else None
    if args.tiny:
        code = tiny.TINY_CODE
        if args.tiny_models:  # a models folder that has it already (the tests'): linked, not written again
            (models / "main").mkdir(exist_ok=True)
            for name in (f"{code}.safetensors", f"{code}.json", f"{code}-diffusers"):
                (models / "main" / name).unlink(missing_ok=True)
                (models / "main" / name).symlink_to(Path(args.tiny_models).resolve() / "main" / name)
        else:
            tiny.write_model(models)
        if vae_file is None:  # the operator's-VAE path exercised with the tiny VAE (a diffusers VAE folder)
            vae_file = (models / "main" / f"{code}-diffusers" / "vae").resolve()
        return code, *_aliases(models, code, vae_file)
    code = FULL_CODE
    print(f"building SDXL base with random weights on {device} (fp16) and exporting it", file=sys.stderr)
    pipe = build(device, torch.float16, root / "cache")
    checkpoint.export_single_file(pipe, models / "main" / f"{code}.safetensors")
    for index, name in enumerate(LORAS):  # rank 32 on every attention projection, PEFT layout
        state = {k: v.contiguous() for k, v in lora_state(pipe, seed=index, rank=32, scale=0.02).items()}
        save_file(state, str(models / "lora" / f"{name}.safetensors"))
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return code, *_aliases(models, code, vae_file)


def _aliases(models: Path, code: str, vae_file: Path | None) -> tuple[str, dict[str, str]]:
    """The main model `code` under a second code, and with `vae_file` installed as an operator's VAE
    under a third whose sidecar names it: (second code, {VAE label: main model code})."""

    def alias(new: str, **sidecar: Any) -> str:
        """The main model's file under the code `new` (a link), with its sidecar and `sidecar` in it."""
        main = models / "main"
        (main / f"{new}.safetensors").unlink(missing_ok=True)  # a --work-dir used before
        (main / f"{new}.safetensors").symlink_to(main / f"{code}.safetensors")
        own = main / f"{code}.json"
        meta = json.loads(own.read_text()) if own.exists() else {}
        (main / f"{new}.json").write_text(json.dumps({**meta, **sidecar}))
        return new

    second = alias(f"{code}-second")
    vaes = {"own": code}
    if vae_file is not None:
        (models / "vae").mkdir(exist_ok=True)
        suffix = "" if vae_file.is_dir() else ".safetensors"
        (models / "vae" / f"{OPERATOR_VAE}{suffix}").unlink(missing_ok=True)
        (models / "vae" / f"{OPERATOR_VAE}{suffix}").symlink_to(vae_file)
        vaes[f"operator ({vae_file.name})"] = alias(f"{code}-vae", Vae=OPERATOR_VAE)
    return second, vaes


# --- helpers --------------------------------------------------------------------------------------------
def data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def reference_images(size: int) -> tuple[str, str]:
    """An init image (a colour gradient) and an inpainting mask (a white square in the middle)."""
    from PIL import Image

    x = np.linspace(0, 255, size)[None, :, None]
    y = np.linspace(0, 255, size)[:, None, None]
    image = Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return data_uri(image), data_uri(Image.fromarray(mask))


def pixels(generated: Any) -> np.ndarray:
    return np.asarray(generated.images[0], dtype=np.int16)


def on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def modules_of(pipe: Any) -> dict[str, dict[str, list[str]]]:
    """Each weight module's parameter dtypes and devices."""
    return {
        name: {
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in getattr(pipe, name).parameters()}),
            "devices": sorted({str(p.device) for p in getattr(pipe, name).parameters()}),
        }
        for name in MODULES
    }


def misplaced(pipe: Any, dtype: torch.dtype, device: torch.device) -> list[str]:
    """The weight modules of `pipe` with a parameter in another dtype or on another device."""
    return [
        name
        for name in MODULES
        if any(p.dtype != dtype or not on_device(p, device) for p in getattr(pipe, name).parameters())
    ]


def weight_memory(model: Any, device: torch.device) -> int:
    """What the model's weights take: CUDA's allocated bytes, or on the CPU the distinct storages of its
    pipelines (the txt2img one and those derived from it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    return loader.pipeline_bytes(model.base, *model._derived_pipelines.values())


@contextlib.contextmanager
def decodes_watched(vae: Any) -> Iterator[list[dict[str, Any]]]:
    """Every `vae.decode` call inside the block: its input dtype, the VAE's dtype, whether its output
    is finite (no NaN/Inf), or the error it raised."""
    calls: list[dict[str, Any]] = []
    original = vae.decode

    def watched(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        call: dict[str, Any] = {"input": str(latents.dtype).removeprefix("torch."), "vae": str(vae.dtype)[6:]}
        calls.append(call)
        try:
            out = original(latents, *args, **kwargs)
        except Exception as exc:
            call["error"] = f"{type(exc).__name__}: {exc}"[:300]
            raise
        sample = out[0] if isinstance(out, tuple) else out.sample
        call["finite"] = bool(torch.isfinite(sample).all())
        return out

    vae.decode = watched
    try:
        yield calls
    finally:
        del vae.decode  # the class's method again


@contextlib.contextmanager
def logged(name: str = "picserve") -> Iterator[list[str]]:
    """The WARNING and ERROR records of logger `name` inside the block."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    handler = Keep(logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def release(device: torch.device) -> None:
    """What the last check left on the GPU returned (nothing to do on the CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def result(passed: bool, summary: str, **figures: Any) -> dict[str, Any]:
    return {"status": "PASS" if passed else "FAIL", "summary": summary, **figures}


def skip(reason: str) -> dict[str, Any]:
    return {"status": "SKIP", "summary": reason}


# --- the checks -----------------------------------------------------------------------------------------
def check_dtypes(setup: Setup) -> dict[str, Any]:
    engine = setup.shared()
    init, mask = reference_images(setup.size)
    requests = {
        "txt2img": setup.spec(),
        "img2img": setup.spec(init_image=init, strength=0.6),
        "inpaint": setup.spec(init_image=init, mask_image=mask, strength=0.8),
    }
    modes: dict[str, Any] = {}
    failures = []
    start_bytes = None
    model_bytes = 0
    for mode, spec in requests.items():
        model = engine.pipelines.get(setup.code)
        with decodes_watched(model.base.vae) as decodes:
            engine.generate(spec)
        model_bytes = model_bytes or model.nbytes
        used = weight_memory(model, setup.device)
        start_bytes = used if start_bytes is None else start_bytes
        pipe = model.pipeline(mode)
        wrong = sorted(
            set(misplaced(model.base, setup.dtype, setup.device) + misplaced(pipe, setup.dtype, setup.device))
        )
        growth = used - start_bytes
        modes[mode] = {
            "modules": modules_of(model.base),
            "shares_modules": all(getattr(pipe, n) is getattr(model.base, n) for n in MODULES),
            "decodes": decodes,
            "weight_memory_bytes": used,
            "growth_bytes": growth,
        }
        if wrong:
            failures.append(f"after {mode}: {', '.join(wrong)} not {str(setup.dtype)[6:]} on {setup.device}")
        if growth >= model_bytes / 2:
            failures.append(f"after {mode}: memory grew by {growth / 2**20:.0f} MiB (model {model_bytes / 2**20:.0f})")
    expected_decode = str(decode_dtype(engine.pipelines.get(setup.code).base.vae)).removeprefix("torch.")
    summary = "; ".join(failures) or (
        f"every module {str(setup.dtype)[6:]} on {setup.device} after txt2img, img2img, inpaint; "
        f"weights' memory grew by {max(m['growth_bytes'] for m in modes.values()) / 2**20:.1f} MiB at most "
        f"(model {model_bytes / 2**20:.1f} MiB); VAE decodes in {expected_decode}"
    )
    return result(not failures, summary, model_bytes=model_bytes, expected_decode_dtype=expected_decode, modes=modes)


def check_vae(setup: Setup) -> dict[str, Any]:
    size = setup.size if setup.args.tiny else 1024
    engine = setup.shared()
    vaes: dict[str, Any] = {}
    failures = []
    for label, code in setup.vaes.items():
        figures: dict[str, Any] = {"model_code": code, "size": size}
        vaes[label] = figures
        with logged() as records:
            try:
                model = engine.pipelines.get(code)
                figures["vae_dtype"] = str(model.base.vae.dtype).removeprefix("torch.")
                figures["decode_dtype"] = str(decode_dtype(model.base.vae)).removeprefix("torch.")
                with decodes_watched(model.base.vae) as decodes:
                    figures["decodes"] = decodes
                    image = pixels(engine.generate(setup.spec(model_code=code, width=size, height=size)))
            except Exception as exc:
                figures["error"] = f"{type(exc).__name__}: {exc}"[:500]
                failures.append(f"{label}: {figures['error']}")
                continue
            finally:
                figures["log"] = records
        figures.update(mean=float(image.mean()), std=float(image.std()), max=int(image.max()))
        last_finite = bool(decodes) and decodes[-1].get("finite") is True
        figures["re_decoded"] = len(decodes) > 1
        if not last_finite:
            failures.append(f"{label}: NaN/Inf out of the VAE decode")
        elif image.max() == 0:
            failures.append(f"{label}: the image is uniformly black")
        figures["what_happened"] = (
            "no decode seen"
            if not decodes
            else "decoded finite"
            if len(decodes) == 1 and last_finite
            else f"{len(decodes)} decodes: " + ", ".join(f"{d['input']}→{d.get('finite', 'error')}" for d in decodes)
        )
    summary = "; ".join(failures) or "; ".join(
        f"{label}: {f['size']}² finite, mean {f['mean']:.1f}, decode {f['decode_dtype']} ({f['what_happened']})"
        for label, f in vaes.items()
    )
    return result(not failures, summary, vaes=vaes)


def pinned(setup: Setup, models: list[Any]) -> dict[str, int] | None:
    """The page-locked host memory behind the RAM tier (None off CUDA: nothing is pinned there):
    `blocks`, what the loader locked for `models`' weights (one block per model, cudaHostRegister,
    outside torch's allocator: its `_pinned_bytes`); `torch_cache`, what torch's caching pinned
    allocator holds (`torch.cuda.host_memory_stats`; where weights were pinned tensor by tensor, all
    of it); `vm_pin`, the kernel's count of pinned pages of this process (/proc/self/status VmPin)."""

    if setup.device.type != "cuda":
        return None
    stats = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
    count = getattr(loader, "_pinned_bytes", None)
    return {
        "blocks": sum(count(model.base) for model in models) if count is not None else 0,
        "torch_cache": int(stats.get("allocated_bytes.current", 0)),
        "vm_pin": status_bytes("VmPin"),
    }


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status in bytes (0 where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def check_ram_tier(setup: Setup) -> dict[str, Any]:
    engine = setup.shared()
    cache = engine.pipelines
    first = pixels(engine.generate(setup.spec()))
    model = cache.get(setup.code)
    nbytes = model.nbytes
    cache.memory_budget = int(nbytes * 1.5)  # one model fits, two do not
    cache.unload_all(keep=[setup.code])  # models of the checks before (to the RAM tier)
    release(setup.device)
    before, rss0 = pinned(setup, [model]), rss()
    engine.generate(setup.spec(model_code=setup.second))
    evicted = setup.code in cache.on_host and cache.loaded == [setup.second]
    held, rss1 = pinned(setup, [model]), rss()
    started = time.perf_counter()
    cache.get(setup.code)
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    restore_s = time.perf_counter() - started
    back = cache.loaded == [setup.code] and setup.code not in cache.on_host
    after = pinned(setup, [model])
    again = pixels(engine.generate(setup.spec()))
    identical = bool(np.array_equal(first, again))
    # what pinning the model took: its block, and whatever torch's pinned cache grew by
    locked = None
    if before is not None and held is not None:
        locked = held["blocks"] + held["torch_cache"] - before["torch_cache"]
    figures = {
        "model_bytes": nbytes,
        "pinned_before": before,
        "pinned_in_ram_tier": held,
        "pinned_after_restore": after,
        "pinned_for_model": locked,
        "pinned_over_model": None if locked is None else round(locked / nbytes, 4),
        "rss_delta_bytes": rss1 - rss0,
        "restore_s": round(restore_s, 4),
        "counts": dict(cache.counts),
        "bit_identical": identical,
    }
    failures = []
    if not evicted:
        failures.append(f"the first model did not go to the RAM tier (device {cache.loaded}, RAM {cache.on_host})")
    if not back or cache.counts["host_restores"] < 1:
        failures.append("the first model did not come back from the RAM tier")
    if not identical:
        failures.append(f"the restored model's image differs (max |Δ| {int(np.abs(first - again).max())})")
    if locked is not None and not nbytes <= locked <= nbytes * 1.02 + 2**20:  # its bytes, in whole pages
        failures.append(f"{locked / 2**20:.1f} MiB pinned for a model of {nbytes / 2**20:.1f} MiB")
    if after is not None and after["blocks"]:
        failures.append(f"its block ({after['blocks'] / 2**20:.1f} MiB) still pinned after it came back")
    grown = f"RSS {(rss1 - rss0) / 2**20:+.1f} MiB"
    where = (
        f"{locked / 2**20:.1f} MiB pinned for {nbytes / 2**20:.1f} MiB of weights ({grown})"
        if locked is not None
        else f"no pinned memory on a CPU device ({grown})"
    )
    summary = "; ".join(failures) or f"to RAM and back in {restore_s:.3f} s, image bit-identical; {where}"
    return result(not failures, summary, **figures)


def check_compiled_hot_swap(setup: Setup) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    from picserve import domain
    from picserve.engine import acceleration

    cuda = setup.device.type == "cuda"
    if not cuda and not setup.args.cpu_compile:
        return skip("needs CUDA (torch.compile mode reduce-overhead: CUDA graphs); --cpu-compile runs it without")
    setup.close_shared()
    speed = acceleration.Acceleration.parse(
        compile="reduce-overhead" if cuda else "default",
        compile_sizes=f"{setup.size}x{setup.size}",
        lora_slots=2,
        lora_max_rank=32,
    )
    if not cuda:  # dynamo traces and guards as with inductor, without generating code
        speed = dataclasses.replace(speed, compile_backend="eager")
    engine = setup.engine(speed=speed)
    started = time.perf_counter()
    engine.preload([setup.code])
    warm_up_s = time.perf_counter() - started
    state = acceleration.prepared(engine.pipelines.get(setup.code).base)
    assert state is not None and state.dispatch is not None
    graphs, calls = counters["stats"]["unique_graphs"], state.dispatch.compiled_calls
    a, b = (domain.SubModel("lora", code, 1.0) for code in setup.loras())
    sequence = {"none": (), "A": (a,), "B": (b,), "none again": ()}
    images = {}
    with torch.compiler.set_stance("fail_on_recompile"):
        for label, sub_models in sequence.items():
            images[label] = pixels(engine.generate(setup.spec(sub_models=sub_models)))
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    compiled_calls = state.dispatch.compiled_calls - calls

    def delta(x: str, y: str) -> int:
        return int(np.abs(images[x] - images[y]).max())

    figures = {
        "mode": f"{speed.compile_mode} ({speed.compile_backend})",
        "cuda_graphs": cuda,
        "warm_up_s": round(warm_up_s, 2),
        "graphs_after_warm_up": graphs,
        "new_graphs": new_graphs,
        "compiled_unet_calls": compiled_calls,
        "expected_compiled_calls": len(sequence) * setup.args.steps,
        "max_abs_diff": {
            "A-none": delta("A", "none"),
            "B-A": delta("B", "A"),
            "none again-none": delta("none again", "none"),
        },
    }
    failures = []
    if new_graphs:
        failures.append(f"dynamo compiled {new_graphs} more graphs")
    if compiled_calls != figures["expected_compiled_calls"]:
        failures.append(f"{compiled_calls} of {figures['expected_compiled_calls']} UNet calls ran compiled")
    if not delta("A", "none") or not delta("B", "A"):
        failures.append(f"a LoRA did not change the image ({figures['max_abs_diff']})")
    if delta("none again", "none"):
        failures.append("no LoRA after A and B is not the first image bit for bit")
    summary = "; ".join(failures) or (
        f"{figures['mode']}: none → A → B → none, no recompilation, {compiled_calls} compiled UNet calls, "
        f"max |Δ| A-none {delta('A', 'none')}, B-A {delta('B', 'A')}, none restored bit for bit"
    )
    return result(not failures, summary, **figures)


def gpu0_used_by(pid: int) -> int | None:
    """Bytes process `pid` holds on GPU 0 by NVML (None without pynvml)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return sum(
            int(p.usedGpuMemory or 0) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid
        )
    finally:
        pynvml.nvmlShutdown()


def check_gpu0_from_cuda1(setup: Setup) -> dict[str, Any]:
    if setup.device.type != "cuda" or torch.cuda.device_count() < 2:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return skip(f"needs 2 GPUs or more ({count} here)")
    setup.close_shared()
    before = torch.cuda.mem_get_info(0)[0]
    command = [sys.executable, __file__, "--child", "cuda:1", "--work-dir", str(setup.root)]
    command += ["--size", str(setup.size), "--steps", str(setup.args.steps), "--dtype", str(setup.dtype)[6:]]
    command += ["--tiny"] if setup.args.tiny else []
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        said: dict[str, Any] = {}
        for line in child.stdout:  # its one JSON line (whatever else a library printed before it)
            if line.startswith("{"):
                said = json.loads(line)
                break
        if not said.get("generated"):
            raise RuntimeError(f"the worker on cuda:1 did not generate: {said.get('error', 'it exited')}")
        after = torch.cuda.mem_get_info(0)[0]
        by_nvml = gpu0_used_by(child.pid)
        child.stdin.close()
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    taken = before - after
    figures = {"gpu0_free_delta_bytes": taken, "gpu0_bytes_by_nvml": by_nvml, "child": said}
    worst = max(taken, by_nvml or 0)
    passed = worst < 64 * 2**20
    summary = (
        f"a worker on cuda:1 took {taken / 2**20:.0f} MiB on GPU 0 (mem_get_info)"
        + (f", {by_nvml / 2**20:.0f} MiB by NVML" if by_nvml is not None else "")
        + ("" if passed else ": it created a CUDA context there")
    )
    return result(passed, summary, **figures)


def child(args: argparse.Namespace) -> None:
    """`--child DEVICE`: generate once on DEVICE, say so on stdout, hold until stdin closes."""
    from picserve import catalog, domain
    from picserve.engine import tiny
    from picserve.engine.engine import Engine

    try:
        models = catalog.Catalog(Path(args.work_dir) / "models", ttl=0)
        engine = Engine(models, device=args.child, dtype=args.dtype, cache_dir=Path(args.work_dir) / "cache")
        code = tiny.TINY_CODE if args.tiny else FULL_CODE
        spec = domain.GenerationSpec(code, PROMPT, width=args.size, height=args.size, steps=args.steps, seed=1)
        engine.generate(spec)
        print(json.dumps({"generated": True, "device": args.child}), flush=True)
    except Exception as exc:
        print(json.dumps({"generated": False, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
        return
    sys.stdin.read()


CHECKS: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "dtypes": check_dtypes,
    "vae": check_vae,
    "ram_tier": check_ram_tier,
    "compiled_hot_swap": check_compiled_hot_swap,
    "gpu0_from_cuda1": check_gpu0_from_cuda1,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny SDXL (seconds, any device) instead of full size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--size", type=int, default=None, help="square size in pixels (default 1024; --tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 4; --tiny: 2)")
    parser.add_argument("--vae", type=Path, default=None, help="an operator's VAE file or folder to check as well")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    parser.add_argument("--cpu-compile", action="store_true", help="run compiled_hot_swap on the CPU (eager backend)")
    parser.add_argument("--tiny-models", type=Path, default=None, help="--tiny: a models folder holding it already")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the models folder is written (temporary)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 4)
    if args.steps < 2:  # img2img at strength 0.6 would denoise for no step at all
        parser.error("--steps must be 2 or more")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args)
        return 0

    device = torch.device(args.device)
    dtype = loader.resolve_dtype(args.dtype, device)
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": "tiny SDXL" if args.tiny else "SDXL base architecture, random weights",
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "steps": args.steps,
    }
    print(", ".join(f"{k} {v}" for k, v in environment.items()))
    checks: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        root = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="picserve-gpu-check-")))
        started = time.perf_counter()
        code, second, vaes = write_models(args, root, device)
        environment["models_written_s"] = round(time.perf_counter() - started, 1)
        setup = Setup(args, root, device, dtype, code, second, vaes)
        for name in args.checks:
            started = time.perf_counter()
            try:
                checks[name] = CHECKS[name](setup)
            except Exception as exc:
                checks[name] = result(False, f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc())
            checks[name]["seconds"] = round(time.perf_counter() - started, 2)
            release(device)
            print(f"{checks[name]['status']:4}  {name}: {checks[name]['summary']}", flush=True)
    args.out.write_text(json.dumps({"environment": environment, "checks": checks}, indent=1, default=str))
    failed = [name for name, check in checks.items() if check["status"] == "FAIL"]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks did not fail; figures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

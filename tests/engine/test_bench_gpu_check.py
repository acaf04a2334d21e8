"""bench/gpu_check.py keeps working: its `--tiny --dtype float16` run on the CPU (the checks that need
CUDA SKIP, the others run on the tiny SDXL in fp16) passes, and its JSON names every check.

The script is what a GPU host runs for issue 29 (docs/performance.md, "GPU checks"); this test keeps it
from rotting between the rare runs on a GPU. It runs in this process, on the session's tiny model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
CHECKS = {"dtypes", "vae", "ram_tier", "compiled_hot_swap", "gpu0_from_cuda1"}
#: the checks that run on a CPU (the others need CUDA, or two GPUs)
ON_CPU = {"dtypes", "vae", "ram_tier"}


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_fp16_run_passes_what_a_cpu_can_check_and_skips_the_rest(models_dir, tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    argv = ["--tiny", "--dtype", "float16", "--device", "cpu", "--tiny-models", str(models_dir)]
    code = load_script().main([*argv, "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    printed = capsys.readouterr().out
    checks = json.loads(out.read_text())["checks"]
    assert set(checks) == CHECKS
    summaries = {name: f"{check['status']}: {check['summary']}" for name, check in checks.items()}
    assert {name for name, check in checks.items() if check["status"] == "PASS"} == ON_CPU, summaries
    assert {name for name, check in checks.items() if check["status"] == "SKIP"} == CHECKS - ON_CPU, summaries
    assert code == 0
    for name in CHECKS:
        assert f"  {name}: " in printed
    # the figures behind the verdicts: fp16 modules after every mode, the VAE decoded upcast (SDXL's
    # force_upcast), the model back from the RAM tier bit for bit
    modes = checks["dtypes"]["modes"]
    assert set(modes) == {"txt2img", "img2img", "inpaint"}
    assert all(m["modules"]["unet"]["dtypes"] == ["float16"] for m in modes.values())
    assert all(d["input"] == "float32" and d["finite"] for m in modes.values() for d in m["decodes"])
    assert len(checks["vae"]["vaes"]) == 2
    assert checks["ram_tier"]["bit_identical"] and checks["ram_tier"]["counts"]["host_restores"] == 1

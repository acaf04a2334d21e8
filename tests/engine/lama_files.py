"""A LaMa eraser file of the real architecture with random weights, as users download one, for tests.

spandrel builds LaMa at its one fixed size (51M parameters: an FFC ResNet of 9 blocks over 512
features), so no smaller file is detected as LaMa: `write_lama(path)` writes spandrel's own module's
state dict in fp16 safetensors (about 100 MB, a few seconds to build and write; the models_dir fixture
writes it once per cache).

Random weights leave the sigmoid output a flat grey (±0.002), which would hide a filled region that is
not the model's; so the last convolution is rescaled until, on noise, the fill spreads around mid-grey
with a visible ±0.1 in (0, 1). The output is finite and never the input.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import picserve  # noqa: F401  (before spandrel: its torchvision shim, picserve/torchvision_compat.py)

__all__ = ["write_lama"]


def write_lama(path: Path, seed: int = 0) -> Path:
    """A LaMa (in 4 channels: RGB and the mask; out RGB) `.safetensors` file at `path`, written to a
    temporary name first so that a killed run leaves no half file under the name."""
    from safetensors.torch import save_file
    from spandrel.architectures.LaMa import LaMa

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LaMa(in_nc=4, out_nc=3).eval()
        _spread(model, std=0.1)
    state = {
        key: (value.half() if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    save_file(state, str(partial))
    os.replace(partial, path)
    return path


def _spread(model: torch.nn.Module, std: float) -> None:
    """Rescale the last convolution (before the sigmoid) so that, on noise, the output spreads about
    mid-grey by `std`: sigmoid(x) ≈ 0.5 + x/4 near 0, so the logits get 4·std and mean 0."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _module, _args, output: seen.append(output.detach()))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
        hook.remove()
        out = seen[0]
        factor = 4 * std / max(float(out.std()), 1e-8)
        last.weight.mul_(factor)
        assert last.bias is not None
        last.bias.mul_(factor).sub_(factor * float(out.mean()))

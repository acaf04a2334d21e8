"""Tiny upscaler files of real architectures, as users download them, for tests.

`write_compact(path)` (Real-ESRGAN Compact, 8 features, 2 convs: 4,920 parameters) and
`write_esrgan(path)` (ESRGAN RRDB, 8 filters, 1 block: 226k parameters) write spandrel's own modules'
state dicts with random weights: `torch.save` for `.pth` (and `.pt`, `.ckpt`), safetensors for
`.safetensors`, so spandrel detects them from the keys and shapes as it detects the real files.

Random weights leave an ESRGAN's output almost all below 0 (clamped to black), which would make any
comparison of two outputs pass; so the last convolution is rescaled until, on noise, the output spreads
around mid-grey (ESRGAN) or the residual added to the upsampled input is a visible ±0.1 (Compact).
"""

from __future__ import annotations

from pathlib import Path

import torch

import picserve  # noqa: F401  (before spandrel: its torchvision shim, picserve/torchvision_compat.py)

__all__ = ["save_state", "write_compact", "write_esrgan"]


def write_compact(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """A Real-ESRGAN Compact (SRVGGNetCompact) file of `scale` at `path`."""
    from spandrel.architectures.Compact import Compact

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale, act_type="prelu")
        _spread(model, mean=0.0, std=0.1)  # the residual over the nearest-upsampled input
    return save_state(model.state_dict(), path)


def write_esrgan(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """An ESRGAN (RRDB) file of `scale` (1, 2, 4 or 8) at `path`."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
        _spread(model, mean=0.5, std=0.2)
    return save_state(model.state_dict(), path)


def _spread(model: torch.nn.Module, mean: float, std: float) -> None:
    """Rescale the last convolution so that its output on noise has about this mean and deviation."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _module, _args, output: seen.append(output.detach()))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 24, 24))
        hook.remove()
        out = seen[0]
        factor = std / max(float(out.std()), 1e-8)
        last.weight.mul_(factor)
        assert last.bias is not None
        last.bias.mul_(factor).add_(mean - factor * float(out.mean()))


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    """`state` at `path`: safetensors for a .safetensors name, else a torch pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path

"""What "the same image" means per compute dtype, for the fp16 tier (tests/conftest.py).

In float32 every property the engine tests state holds bit for bit. In float16 and bfloat16 the
engine's own determinism still does (same seed, same request: the same bytes), but two computations
that are equal in exact arithmetic and run as different kernels (a model with LoRA adapters loaded
and disabled against one that never had them; a batch against one image at a time; a convolution at
another offset of a circular image) may round differently: within one pixel level (1/255).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["pixel_tolerance", "value_tolerance"]


def pixel_tolerance(engine: Any) -> int:
    """Pixel levels (0..255) two such images may differ by on `engine`: 0 in float32, else 1."""
    return 0 if engine.pipelines.dtype == torch.float32 else 1


def value_tolerance(engine: Any, exact: float) -> float:
    """The tolerance for decoded values in [0, 1]: `exact` in float32, one pixel level (1/255) else."""
    return exact if engine.pipelines.dtype == torch.float32 else 1 / 255

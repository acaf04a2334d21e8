"""Seamless (tileable) output: circular padding in every convolution of the UNet and the VAE.

With circular padding the network sees the image as a torus, so opposite edges continue each other
(as in A1111, SD.Next and InvokeAI). The context manager restores each layer's own padding mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

__all__ = ["seamless", "sliced_vae", "tiled_vae"]


@contextlib.contextmanager
def seamless(pipe: Any, enabled: bool) -> Iterator[None]:
    """Circular padding in `pipe`'s UNet and VAE while `enabled`."""
    if not enabled:
        yield
        return
    convs = [m for m in (*pipe.unet.modules(), *pipe.vae.modules()) if isinstance(m, nn.Conv2d)]
    saved = [m.padding_mode for m in convs]
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, saved, strict=True):
            conv.padding_mode = mode


def tiled_vae(pipe: Any, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Decode (and encode) in overlapping tiles, so VAE memory stays bounded at large sizes."""
    return _switched(enabled, pipe.vae.enable_tiling, pipe.vae.disable_tiling)


def sliced_vae(pipe: Any, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Decode a batch one image at a time, so VAE memory is one image's whatever the batch."""
    return _switched(enabled, pipe.vae.enable_slicing, pipe.vae.disable_slicing)


@contextlib.contextmanager
def _switched(enabled: bool, on: Callable[[], object], off: Callable[[], object]) -> Iterator[None]:
    """`on()` for the block and `off()` after it, however it ends; nothing when not `enabled`."""
    if not enabled:
        yield
        return
    on()
    try:
        yield
    finally:
        off()

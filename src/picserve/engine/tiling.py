"""Seamless (tileable) output: circular padding in every convolution of the UNet and the VAE.

With circular padding the network sees the image as a torus, so opposite edges continue each other
(as in A1111, SD.Next and InvokeAI). The context manager restores each layer's own padding mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["seamless", "tiled_vae"]


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


@contextlib.contextmanager
def tiled_vae(pipe: Any, enabled: bool) -> Iterator[None]:
    """Decode (and encode) in overlapping tiles, so VAE memory stays bounded at large sizes."""
    if not enabled:
        yield
        return
    pipe.vae.enable_tiling()
    try:
        yield
    finally:
        pipe.vae.disable_tiling()

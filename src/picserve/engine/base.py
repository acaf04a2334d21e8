"""What a worker needs of an engine: the `GenerationEngine` protocol and its result. No torch here.

`engine.Engine` (diffusers) implements it; `fake.FakeEngine` does too, for tests of the API and
the worker that need neither torch nor model files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from picserve import domain
from picserve.domain import Capacity
from picserve.engine import png

__all__ = ["Capacity", "Generated", "GenerationEngine", "PreviewCallback", "StepCallback"]

#: called after every denoising step with the fraction done (0..1]; may raise TaskCanceled
StepCallback = Callable[[float], None]
#: called after every denoising step with a function making a preview of the image so far (so that a
#: caller that wants none this step pays nothing; see engine/previews.py)
PreviewCallback = Callable[[Callable[[], Image.Image]], None]


@dataclass(frozen=True)
class Generated:
    """A generation's images, in batch order, with the seed and A1111 `parameters` text of each."""

    images: list[Image.Image]
    seeds: list[int]
    #: A1111 `parameters` text per image
    infotexts: list[str]
    #: a pass asked for latents (a hires fix's first): one (1, 4, h/8, w/8) tensor per image, and no images
    latents: list[Any] = field(default_factory=list)
    #: the result's texts (TaskDetail.TxtList), e.g. what an ImportModel filed
    texts: list[str] = field(default_factory=list)

    def pngs(self) -> list[bytes]:
        return [png.to_png(img, text) for img, text in zip(self.images, self.infotexts, strict=True)]


@dataclass(frozen=True)
class PassInput:
    """What one denoising pass starts from, when it is not the spec's own (`Engine.denoise`): a hires
    fix's second pass, an inpainting's prepared canvas, an only-masked crop."""

    #: "txt2img", "img2img" or "inpaint"
    mode: str
    #: img2img and inpaint: the image at the pass's width×height, or (img2img) latents of its size /8
    image: Image.Image | None = None
    latents: Any = None
    #: inpaint: what the model repaints (L, white), and how the result is blended into `image` (L; None:
    #: by `mask`)
    mask: Image.Image | None = None
    blend: Image.Image | None = None
    #: "image" (decoded, at the spec's exact size) or "latent" (one (1, 4, h/8, w/8) tensor per image)
    output: str = "image"


class GenerationEngine(Protocol):
    """Runs generations on one device, one at a time."""

    def generate(
        self,
        spec: domain.GenerationSpec,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> Generated:
        """Images for `spec`; `on_step` after each denoising step (it may raise TaskCanceled to stop);
        `on_preview` after each step with a function making a preview image (engine/previews.py)."""
        ...

    def holdings(self) -> dict[str, list[str]]:
        """What is loaded: {"main": [ModelCode…], "lora": [ModelCode…], "host": [ModelCode…]} (on the
        device; "host": main models kept in CPU RAM)."""
        ...

    def capacity(self) -> Capacity:
        """The device's memory and the main models' share of it."""
        ...

    def preload(self, codes: list[str]) -> None:
        """Load these main models before taking jobs."""
        ...

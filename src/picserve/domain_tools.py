"""The specs of the image toolkit's actions around a generation: RestoreFaces, ExtractContents and
DescribeImages: frozen values, no I/O, no wire names, registered with the domain's union of task specs
(`domain.register_spec`) when this module is imported. The task repositories (`picserve.tasks`) import
it, so any process that reads a task row can read these kinds.

Each image is kept as the base64 it arrived as while the spec is built, and in the store while the task
is queued (`image`/`image_key`, `images`/`images_keys`: tasks/references.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from picserve.domain import Needs, register_spec

__all__ = ["DescribeSpec", "ExtractSpec", "FaceRestoreSpec"]


def _data(text: str | Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(text) if isinstance(text, str) else dict(text)


@dataclass(frozen=True)
class FaceRestoreSpec:
    """RestoreFaces: every face the detector finds restored by a face model and blended back."""

    #: the image's size, read at submit
    width: int
    height: int
    #: the face restorer (models/faces) and the face detector (models/facedetect)
    restorer_code: str
    detector_code: str
    #: PICPIK's RestoreStrength: 0 gives the input back, 1 the restored faces
    strength: float = 0.5
    image: str | None = None
    image_key: str | None = None

    kind: ClassVar[str] = "faces"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> FaceRestoreSpec:
        return cls(**_data(text))

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        return self.width * self.height

    def cost(self, divisor: int) -> int:
        """Credits: the image's pixels / divisor (1 per megapixel by default), at least 1."""
        return max(1, math.ceil(self.width * self.height / divisor))


@dataclass(frozen=True)
class ExtractSpec:
    """ExtractContents: the object under the include points (and not under the exclude points) segmented
    by a Segment Anything model, then cut out with RemoveBackground's matting, or its mask."""

    width: int
    height: int
    #: the point segmenter (models/segment)
    model_code: str
    #: IncludePointList and ExcludePointList: (X, Y) pixels of the image
    include: tuple[tuple[int, int], ...]
    exclude: tuple[tuple[int, int], ...] = ()
    #: RemoveBackground's matting fields, with its meanings
    erode_size: int = 15
    foreground_threshold: int = 240
    background_threshold: int = 15
    hair: str = "auto"
    only_mask: bool = False
    image: str | None = None
    image_key: str | None = None

    kind: ClassVar[str] = "extract"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> ExtractSpec:
        data = _data(text)
        data["include"] = tuple((int(x), int(y)) for x, y in data["include"])
        data["exclude"] = tuple((int(x), int(y)) for x, y in data.get("exclude", ()))
        return cls(**data)

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        return self.width * self.height

    def cost(self, divisor: int) -> int:
        """Credits: the image's pixels / divisor, at least 1."""
        return max(1, math.ceil(self.width * self.height / divisor))


@dataclass(frozen=True)
class DescribeSpec:
    """DescribeImages: one text per image, in order (TaskDetail.TxtList), by a captioner or a tagger,
    translated from English when `language` is another."""

    #: each image's size, read at submit
    sizes: tuple[tuple[int, int], ...]
    #: the captioner or tagger (models/caption)
    model_code: str
    #: TranslateDescription: the texts' language (§8.2's codes)
    language: str = "en"
    images: tuple[str | None, ...] = ()
    images_keys: tuple[str | None, ...] = ()

    kind: ClassVar[str] = "describe"
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> DescribeSpec:
        data = _data(text)
        data["sizes"] = tuple((int(w), int(h)) for w, h in data["sizes"])
        data["images"] = tuple(data.get("images", ()))
        data["images_keys"] = tuple(data.get("images_keys", ()))
        return cls(**data)

    def needs(self) -> Needs:
        return Needs()

    def work(self) -> int:
        return sum(w * h for w, h in self.sizes)

    def cost(self, divisor: int) -> int:
        """Credits: 1 per image (a caption's work hardly depends on the image's size)."""
        return len(self.sizes)


register_spec(FaceRestoreSpec)
register_spec(ExtractSpec)
register_spec(DescribeSpec)

"""The task kinds' requests: for each, how its wire message becomes a checked spec (every check done
before queueing) and its memory plan. submission.py holds the table of them by Action.
"""

from __future__ import annotations

from collections.abc import Sized

from picserve import errors
from picserve.protocol import messages

__all__ = ["check_index"]


def check_index(field: str, index: int, images: Sized, images_field: str = "ImageAndMaskList") -> None:
    """Refuse an index (`field`'s value) that names no entry of the request's image list (`images_field`),
    naming the indexes there are, or that the list is empty."""
    if index < len(images):
        return
    there = f" (indexes 0..{len(images) - 1})" if len(images) else "; send the image in it"
    raise errors.ParamError(
        f"{field} {messages.shown(index)} is out of range: {images_field} has {len(images)} entries{there}"
    )

"""The task kinds' requests: for each, how its wire message becomes a checked spec (every check done
before queueing) and its memory plan. submission.py holds the table of them by Action.
"""

from __future__ import annotations

from collections.abc import Sized

from picserve import catalog as catalog_module
from picserve import errors
from picserve.protocol import messages

__all__ = ["check_index", "tool_model"]


def check_index(field: str, index: int, images: Sized, images_field: str = "ImageAndMaskList") -> None:
    """Refuse an index (`field`'s value) that names no entry of the request's image list (`images_field`),
    naming the indexes there are, or that the list is empty."""
    if index < len(images):
        return
    there = f" (indexes 0..{len(images) - 1})" if len(images) else "; send the image in it"
    raise errors.ParamError(
        f"{field} {messages.shown(index)} is out of range: {images_field} has {len(images)} entries{there}"
    )


def tool_model(
    catalog: catalog_module.Catalog, kind: str, code: str | None, field: str, what: str, setting: str | None = None
) -> catalog_module.Entry:
    """The image tool's model of `kind` that `field` names (`code`), or for a request naming none the
    default (its sidecar's `Default: true`, else `setting`, else the only one installed); ModelNotFound
    naming the field, the folder and what is installed, and how to install `what` when nothing is."""
    entries = catalog.entries(kind)
    installed = ", ".join(sorted(entries)) or "none"
    if code is None:
        entry = catalog.default_tool(kind, setting)
        if entry is None:
            hint = f"install {what} in models/{kind} (docs/models.md)" if not entries else "name one"
            raise errors.ModelNotFound(
                f"{field}: none given, and this server has no default (installed in models/{kind}: {installed}); {hint}"
            )
        code, field = entry.code, f"{field} (the default)"
    entry = catalog.get(kind, code)
    if entry is None:
        raise errors.ModelNotFound(f"{field} {code!r} is not on this server (installed in models/{kind}: {installed})")
    if entry.info.problem:
        raise errors.ModelNotFound(f"{field} {code!r} cannot be used: {entry.info.problem}")
    return entry

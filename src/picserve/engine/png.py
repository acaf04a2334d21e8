"""PNG encoding with A1111-style `parameters` metadata. PIL only, no torch."""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

__all__ = ["infotext", "to_png"]


def infotext(prompt: str, negative_prompt: str, fields: dict[str, object]) -> str:
    """The `parameters` text A1111 writes: prompt, `Negative prompt: …`, then `Key: value, …`."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None and v != ""))
    return "\n".join(lines)


def to_png(image: Image.Image, parameters: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)  # tEXt, or iTXt when not Latin-1, as A1111
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()

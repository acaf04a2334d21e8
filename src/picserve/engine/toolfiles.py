"""What an image tool's model file is, found by loading it the way a worker will: `models add/info`.

    .pth/.pt/.ckpt/.bin/.safetensors   spandrel's detection (the loader ComfyUI uses): an upscaler of
                                       scale 2 or more (purpose "SR") is kind `upscale`, with its
                                       architecture and scale; an inpainting model (LaMa: purpose
                                       "Inpainting") is kind `inpaint`, RemoveContents' eraser, with
                                       its architecture
    .onnx                              onnxruntime opens it: one image input [N, 3, H, W] and a mask
                                       output make it kind `background`, with its rembg session family

A file neither library takes is refused with the library's own reason. The checks of modelfiles.py
(headers, pickles that would run code) come first; only a file that passed them is loaded here.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from picserve import modelinfo
from picserve.modelinfo import ToolFacts

__all__ = ["identify"]

#: the rembg family of a 1-input ONNX model by its input side, when neither its sidecar nor its file
#: name says (320: the U²-Net family; 1024: BiRefNet, today's usual choice)
_SESSION_BY_SIDE = {320: "u2net", 1024: "birefnet-general"}


def identify(path: Path) -> ToolFacts:
    """Load `path` as an upscaler or an eraser (spandrel) or a segmentation model (onnxruntime); never
    raises for a bad file: `problem` says why none takes it."""
    if path.suffix.lower() == ".onnx":
        return _onnx(path)
    return _spandrel(path)


def _spandrel(path: Path) -> ToolFacts:
    # An image model's first layer convolves the image's channels (1, 3 or 4 in: LaMa's are RGB and the
    # mask): a file without such a weight is no upscaler or eraser, said from its header alone (no torch)
    try:
        shapes, _ = modelinfo.read_shapes(path)
    except modelinfo.UNREADABLE as exc:
        return ToolFacts(None, problem=f"unreadable: {exc}")
    if not any(len(shape) == 4 and shape[1] in (1, 3, 4) for shape in shapes.values()):
        return ToolFacts(None, problem="it has no convolution over an image's channels, so it is no upscaler or eraser")
    import spandrel  # picserve/__init__ made torchvision importable beside the CPU torch (torchvision_compat)

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        return ToolFacts(None, problem="spandrel recognises no upscaler or inpainting architecture in it")
    except Exception as exc:  # the file's fault: spandrel raises what torch and the architectures raise
        return ToolFacts(None, problem=f"spandrel cannot load it: {type(exc).__name__}: {exc}"[:300])
    name, scale, purpose = descriptor.architecture.name, int(descriptor.scale), descriptor.purpose
    details: dict[str, Any] = {
        "architecture": name,
        "scale": scale,
        "purpose": purpose,
        "parameters": f"{sum(p.numel() for p in descriptor.model.parameters()):,}",
    }
    if isinstance(descriptor, spandrel.MaskedImageModelDescriptor) and purpose == "Inpainting":
        del details["scale"]  # an inpainting model keeps the image's size
        return ToolFacts("inpaint", sidecar={"Architecture": name}, details=details)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or purpose != "SR" or scale < 2:
        return ToolFacts(
            None,
            details=details,
            problem=f"a {name} model for {purpose} at scale {scale}: ResizeImage takes upscalers of scale 2 or more, "
            "RemoveContents inpainting models",
        )
    return ToolFacts("upscale", sidecar={"Architecture": name, "Scale": scale}, details=details)


def _onnx(path: Path) -> ToolFacts:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types are not importable by name
        return ToolFacts(None, problem=f"onnxruntime cannot load it: {exc}"[:300])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    details = {
        "inputs": ", ".join(f"{i.name} {list(i.shape)}" for i in inputs),
        "outputs": ", ".join(f"{o.name} {list(o.shape)}" for o in outputs),
    }
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] not in (3, "C", None) or not outputs:
        return ToolFacts(
            None,
            details=details,
            problem="not a segmentation model rembg runs: it needs one image input [N, 3, H, W] and a mask output",
        )
    side = shape[2] if isinstance(shape[2], int) else None
    session_name = _SESSION_BY_SIDE.get(side or 0)
    sidecar = {"Session": session_name} if session_name else {}
    return ToolFacts("background", sidecar=sidecar, details={**details, "input side": side or "any"})

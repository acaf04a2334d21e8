"""What an image tool's model file or folder is, found by loading it the way a worker will: `models add/info`.

    .pth/.pt/.ckpt/.bin/.safetensors   spandrel's detection (the loader ComfyUI uses): an upscaler of
                                       scale 2 or more (purpose "SR") is kind `upscale`, with its
                                       architecture and scale; an inpainting model (LaMa: purpose
                                       "Inpainting") is kind `inpaint`, RemoveContents' eraser, with
                                       its architecture; a face restorer (purpose "FaceSR": GFPGAN,
                                       RestoreFormer, CodeFormer) is kind `faces` (engine/faces.py)
    .onnx                              OpenCV's FaceDetectorYN runs it with YuNet's outputs: kind
                                       `facedetect` (engine/faces.py); else onnxruntime opens it: one
                                       image input [N, 3, H, W] and a mask output make it kind
                                       `background`, with its rembg session family
    a folder                           transformers loads it as a SAM model: kind `segment`
                                       (engine/segment.py); as an image-to-text model, or it holds a
                                       tagger's model.onnx and selected_tags.csv: kind `caption`
                                       (engine/describe.py)

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
    """Load `path` as an upscaler, an eraser or a face restorer (spandrel), a face detector (OpenCV) or a
    segmentation model (onnxruntime), or a folder as a point segmenter or a captioner; never raises for a
    bad file: `problem` says why none takes it."""
    if path.is_dir():
        return _folder(path)
    # faces imports torch: not for a file whose header already says it is no image model
    if path.suffix.lower() == ".onnx":
        from picserve.engine import faces

        detector = faces.identify(path)
        return detector if detector.kind is not None else _onnx(path)
    found = _spandrel(path)
    if found.kind is not None or found.problem == _NO_IMAGE_CONVOLUTION:  # nor a face restorer, whose check is narrower
        return found
    from picserve.engine import faces

    face = faces.identify(path)  # a face restorer (CodeFormer needs spandrel-extra-arches: it says so)
    return face if face.kind is not None or face.details.get("architecture") == "CodeFormer" else found


def _folder(path: Path) -> ToolFacts:
    """A SAM folder, else a captioner or tagger folder; the refusal names what each found."""
    from picserve.engine import describe, segment

    if describe.is_tagger(path):
        return describe.identify(path)
    as_segmenter = segment.identify(path)
    if as_segmenter.kind is not None:
        return as_segmenter
    as_captioner = describe.identify(path)
    if as_captioner.kind is not None:
        return as_captioner
    return ToolFacts(
        None,
        problem=f"neither a point segmenter ({as_segmenter.problem}) nor a captioner ({as_captioner.problem})"[:400],
    )


_NO_IMAGE_CONVOLUTION = "it has no convolution over an image's channels, so it is no upscaler or eraser"


def _spandrel(path: Path) -> ToolFacts:
    # An image model's first layer convolves the image's channels (1, 3 or 4 in: LaMa's are RGB and the
    # mask): a file without such a weight is no upscaler or eraser, said from its header alone (no torch)
    try:
        shapes, _ = modelinfo.read_shapes(path)
    except modelinfo.UNREADABLE as exc:
        return ToolFacts(None, problem=f"unreadable: {exc}")
    if not any(len(shape) == 4 and shape[1] in (1, 3, 4) for shape in shapes.values()):
        return ToolFacts(None, problem=_NO_IMAGE_CONVOLUTION)
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

"""Tiny ONNX segmentation models, saved as the files users install in models/background.

rembg feeds a model the image resized to the family's input size, divided by its brightest value and
normalised with the family's mean and standard deviation (ImageNet's for U²-Net and BiRefNet, 0.5 and 1
for ISNet/DIS), as a (1, 3, H, W) float tensor named like U²-Net's `input.1`; it reads channel 0 of the
first output (1, 1, H, W), min-max stretched (BiRefNet's sessions apply a sigmoid first).

`write_tiny_segmenter` writes one 1×1 convolution (+ sigmoid) that undoes that normalisation: its
output is sigmoid(steepness · (brightness − 0.5)), brightness the mean of R, G, B over the image's
brightest value. Bright pixels are foreground, dark ones background, and a smooth ramp of brightness
gives a soft edge (an unknown band for alpha matting); a hard edge stays hard. Its spatial dimensions
are symbolic, so every family's input size runs through it. A few hundred bytes, ir_version 8, opset 17.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IMAGENET", "ISNET", "save_graph", "write_not_onnx", "write_tiny_segmenter", "write_wrong_input_model"]

#: (mean, std) of the U²-Net, BiRefNet and BRIA families' normalisation
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: (mean, std) of the ISNet / DIS / BEN families
ISNET = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    """`graph` as a checked ONNX model file (opset 17, IR 8) at `path`."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="picserve-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_segmenter(
    path: Path,
    steepness: float = 12.0,
    normalization: tuple[Sequence[float], Sequence[float]] = IMAGENET,
    sigmoid: bool = True,
) -> Path:
    """Write the tiny segmenter to `path` (see the module docstring) and return `path`.

    `normalization`: the (mean, std) of the session family it will run under (IMAGENET or ISNET), so
    that its output depends on the image's own brightness; `sigmoid=False` leaves logits, as BiRefNet's
    files do (rembg's BiRefNet sessions apply the sigmoid; with it left in, the mask is only flatter).
    """
    mean, std = (np.asarray(v, dtype=np.float64) for v in normalization)
    # x_c = n_c·std_c + mean_c  →  brightness = Σ(n_c·std_c)/3 + Σ mean_c/3
    weight = (steepness * std / 3.0).reshape(1, 3, 1, 1).astype(np.float32)
    bias = np.array([steepness * (mean.sum() / 3.0 - 0.5)], dtype=np.float32)
    nodes = [helper.make_node("Conv", ["input.1", "w", "b"], ["logits" if sigmoid else "output"], name="conv")]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"], name="sigmoid"))
    graph = helper.make_graph(
        nodes,
        "tiny-segmenter",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "height", "width"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return save_graph(graph, path)


def write_wrong_input_model(path: Path) -> Path:
    """A valid ONNX model that is no image segmenter: its one input is a (1, 16) vector."""
    weight = numpy_helper.from_array(np.ones((16, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["score"])],
        "not-a-segmenter",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        initializer=[weight],
    )
    return save_graph(graph, path)


def write_not_onnx(path: Path) -> Path:
    """A damaged download: starts like an ONNX file (a protobuf whose first field is ir_version, so a
    catalog scan does not flag it) and then breaks off; onnxruntime cannot parse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x08\x08\x12\x0cbroken off" + bytes(range(7, 64)))
    return path

"""Tiny face models of the real formats, saved as the files users install in models/faces and
models/facedetect, for tests.

`write_tiny_yunet(path)` writes an ONNX graph OpenCV's `cv2.FaceDetectorYN` runs as it runs YuNet
(face_detection_yunet_2023mar.onnx): one input `input` (1, 3, H, W), BGR 0..255, and the twelve outputs
`cls_8 … kps_32` it reads by name, each (1, N, C) with N the cells of that stride (row-major) and C 1,
1, 4 or 10. OpenCV decodes a cell (c, r) of stride s as score √(cls·obj), box centre ((c + b0)·s,
(r + b1)·s), size (e^b2·s, e^b3·s) and landmark k at ((c + k_x)·s, (r + k_y)·s).

What it detects is a marker, not a face: a **magenta** square (R and B high, G low) filling a 32×32 cell
of the 32-stride grid. Its `cls` and `obj` are the cell's share of magenta pixels (a 1×1 convolution
of sigmoid(0.1·(R + B − 2G − 200)), average-pooled over the cell), so a filled cell scores 1.0, a
cell two-thirds filled about 0.67 and anything else about 0 (the 8- and 16-stride maps are all 0). Its
box is centred on the cell and `cells` cells wide (4: 128 px), and its five landmarks are FFHQ's
512² template scaled into that box, so the face's alignment is a plain scale and shift and its paste
box is the detection's box. Dynamic H and W; a few KB, ir_version 8, opset 17.

`write_tiny_restoreformer(path)` writes spandrel's RestoreFormer with 32 channels at every level (GroupNorm
needs 32), one residual block per level, five levels (so the middle attention runs at 32² and none at
16²), a 16-entry codebook of 8 dimensions: 0.45 M parameters, stored as fp16 (0.9 MB), random weights.
spandrel detects it as RestoreFormer (purpose FaceSR, multiple of 32) from the keys and shapes, as it
detects the real RestoreFormer.ckpt. Random weights give a blurry mid-grey texture: different from any
face put in (which is all a test needs), about 1.7 s of CPU per 512² face on one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import picserve  # noqa: F401  (before spandrel: its torchvision shim, picserve/torchvision_compat.py)
from picserve.engine.faces import FACE_SIZE, FFHQ_TEMPLATE
from tests.engine.onnx_files import save_graph
from tests.engine.upscale_files import save_state

__all__ = ["MAGENTA", "YUNET_STRIDE", "write_codeformer_like", "write_tiny_restoreformer", "write_tiny_yunet"]

#: the colour the tiny detector takes for a face (RGB)
MAGENTA = (255, 0, 255)
#: the stride whose grid the tiny detector's faces lie on
YUNET_STRIDE = 32


def write_tiny_yunet(path: Path, cells: float = 4.0) -> Path:
    """The tiny YuNet-format detector (see the module docstring) at `path`; `cells`: its boxes' side in
    cells of YUNET_STRIDE px."""
    initializers: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    # the input is BGR: 0.1·(B − 2G + R) − 20, through a sigmoid: ≈1 on magenta, ≈0 on greys and skin
    marker_weight = (0.1 * np.array([1.0, -2.0, 1.0])).reshape(1, 3, 1, 1).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv",
            ["input", constant("marker_w", marker_weight), constant("marker_b", np.array([-20.0], np.float32))],
            ["marker_logit"],
        ),
        helper.make_node("Sigmoid", ["marker_logit"], ["marker"]),
    ]
    template = FFHQ_TEMPLATE.astype(np.float64) / FACE_SIZE  # in faces, from the face's corner
    landmarks = (0.5 - cells / 2 + template * cells).reshape(-1)  # in cells, from the cell's corner
    heads = {
        "cls": (1, np.zeros(1)),
        "obj": (1, np.zeros(1)),
        "bbox": (4, np.array([0.5, 0.5, np.log(cells), np.log(cells)])),
        "kps": (10, landmarks),
    }
    outputs = []
    for stride in (8, 16, 32):
        pooled = f"pool_{stride}"
        nodes.append(
            helper.make_node("AveragePool", ["marker"], [pooled], kernel_shape=[stride] * 2, strides=[stride] * 2)
        )
        for head, (channels, bias) in heads.items():
            name = f"{head}_{stride}"
            gain = 1.0 if head in ("cls", "obj") and stride == YUNET_STRIDE else 0.0
            weight = np.full((channels, 1, 1, 1), gain, np.float32)
            nodes += [
                helper.make_node(
                    "Conv",
                    [pooled, constant(f"{name}_w", weight), constant(f"{name}_b", bias.astype(np.float32))],
                    [f"{name}_map"],
                ),
                helper.make_node("Transpose", [f"{name}_map"], [f"{name}_cells"], perm=[0, 2, 3, 1]),
                helper.make_node(
                    "Reshape",
                    [f"{name}_cells", constant(f"{name}_shape", np.array([1, -1, channels], np.int64))],
                    [name],
                ),
            ]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, f"n{stride}", channels]))
    order = [f"{head}_{stride}" for head in heads for stride in (8, 16, 32)]  # YuNet's: cls_8, cls_16, …
    outputs.sort(key=lambda info: order.index(info.name))
    graph = helper.make_graph(
        nodes,
        "tiny-yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        initializer=initializers,
    )
    return save_graph(graph, path)


def write_tiny_restoreformer(path: Path, seed: int = 0) -> Path:
    """The tiny RestoreFormer (see the module docstring) at `path` (`.pth`: torch.save; `.safetensors`)."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RestoreFormer(
            n_embed=16, embed_dim=8, ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1, z_channels=8, head_size=8
        )
    state = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    return save_state(state, path)


def write_codeformer_like(path: Path) -> Path:
    """A file with CodeFormer's telltale keys (spandrel-extra-arches' detection) and an image convolution,
    but nothing else: what a CodeFormer file looks like to a spandrel without the extra architectures."""
    state = {
        "encoder.blocks.0.weight": torch.zeros(8, 3, 3, 3),
        "position_emb": torch.zeros(16, 8),
        "idx_pred_layer.1.weight": torch.zeros(16, 8),
        "quantize.embedding.weight": torch.zeros(16, 8),
        "ft_layers.0.self_attn.in_proj_weight": torch.zeros(24, 8),
    }
    return save_state(state, path)

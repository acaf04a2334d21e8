"""ControlNet units on a generation: control models loaded and held by bytes, control maps, and the
diffusers SDXL ControlNet pipelines (plain and Union) that share the main model's modules.

What users download loads as such:
- a **diffusers folder** (`config.json` + weights): `ControlNetModel` or `ControlNetUnionModel`, as its
  config's `_class_name` says;
- a **single file with diffusers keys** (lllyasviel's `diffusers_xl_*`, xinsir's union `…promax`, most
  SDXL ControlNets): built from a config derived from the main model's UNet config, with the widths,
  transformer depths and conditioning channels read from the file's own tensor shapes (so the "small"
  and "mid" SDXL ControlNets load too); a sidecar `Config` folder overrides that;
- a **single file with original (ldm) keys** (`control_model.input_blocks…`): converted by diffusers'
  `from_single_file`, with the same derived config.

Per-unit behaviour that diffusers' pipelines have no switch for lives in `ShapedControlNets`, a
`MultiControlNetModel` (or its Union twin) that runs every unit itself and shapes its residuals before
they are summed, the way A1111's sd-webui-controlnet does:
- **mask**: the unit's residuals are multiplied by its mask, resized to each residual's size;
- **ControlMode** `PromptMoreImportant`: residuals weighted from 0.1 (the shallowest) up to 1 (the
  middle block), diffusers' guess-mode weights (A1111's 0.825^(n-i) soft injection, to within 1 %);
- **ControlMode** `ControlNetMoreImportant`: those weights, and the unit acts on the conditional half
  of the classifier-free-guidance batch only (A1111's "cfg injection"), so the prompt's pull is weaker;
- a unit outside its step range is not run at all (its scale is 0 there), as A1111 skips it.
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, errors, modelinfo, reference_images

__all__ = [
    "UNION_TYPES",
    "ControlNets",
    "LoadedControl",
    "ShapedControlNets",
    "decoded",
    "load",
    "pipeline_class",
    "shapers",
    "unit_mask",
]

log = logging.getLogger(__name__)

#: a ControlNet-Union's control types, by index (xinsir's controlnet-union-sdxl-1.0, ProMax: 8)
UNION_TYPES = ("openpose", "depth", "softedge", "canny", "normal", "segment", "tile", "repaint")


@dataclass
class LoadedControl:
    """One control model on the device."""

    code: str
    model: Any  #: ControlNetModel or ControlNetUnionModel
    #: (mtime_ns, size) of the file or folder config it was loaded from
    version: tuple[int, int]
    nbytes: int

    @property
    def is_union(self) -> bool:
        return type(self.model).__name__ == "ControlNetUnionModel"


class ControlNets:
    """The control models on the device, least recently used first, bounded by `budget` bytes
    (PICSERVE_CONTROLNET_MEMORY; None: unbounded): loading one more evicts the least recently used
    that the request at hand does not use. A file changed on disk is loaded again."""

    def __init__(self, catalog: catalog_module.Catalog, device: torch.device, dtype: torch.dtype, budget: int | None):
        self.catalog = catalog
        self.device = device
        self.dtype = dtype
        self.budget = budget
        self._held: OrderedDict[str, LoadedControl] = OrderedDict()
        self._lock = threading.Lock()
        #: loads from disk, evictions
        self.counts = {"loads": 0, "evictions": 0}

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def used(self) -> int:
        with self._lock:
            return sum(c.nbytes for c in self._held.values())

    def get(self, codes: Sequence[str], unet: Any) -> list[LoadedControl]:
        """The control models `codes` (in that order), loaded for a main model whose UNet is `unet`."""
        out = []
        for code in codes:
            entry = self.catalog.get("controlnet", code)
            if entry is None:
                raise errors.ModelLoadError(
                    f"control model {code!r} is no longer in models/controlnet/; install it again or submit without it"
                )
            version = _version(entry.path)
            with self._lock:
                held = self._held.get(code)
                if held is not None and held.version == version:
                    self._held.move_to_end(code)
                    out.append(held)
                    continue
                self._held.pop(code, None)
            model = load(entry, unet.config, self.dtype, self.device)
            loaded = LoadedControl(code, model, version, _bytes(model))
            with self._lock:
                self._make_room(loaded.nbytes, keep=set(codes))
                self._held[code] = loaded
                self.counts["loads"] += 1
            out.append(loaded)
        return out

    def _make_room(self, nbytes: int, keep: set[str]) -> None:
        if self.budget is None:
            return
        for code in list(self._held):
            if sum(c.nbytes for c in self._held.values()) + nbytes <= self.budget:
                break
            if code not in keep:
                del self._held[code]
                self.counts["evictions"] += 1

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


def _version(path: Path) -> tuple[int, int]:
    target = path / "config.json" if path.is_dir() else path
    stat = target.stat()
    return stat.st_mtime_ns, stat.st_size


def _bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def load(entry: catalog_module.Entry, unet_config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The control model of `entry` on `device` in `dtype`, for a main model with `unet_config`;
    ModelLoadError naming the file when it cannot be read or does not fit."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    try:
        if entry.path.is_dir():
            config = json.loads((entry.path / "config.json").read_text())
            cls = ControlNetUnionModel if config.get("_class_name") == "ControlNetUnionModel" else ControlNetModel
            model = cls.from_pretrained(entry.path, torch_dtype=dtype, local_files_only=True)
        else:
            model = _from_single_file(entry, unet_config, dtype)
    except errors.ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, *modelinfo.UNREADABLE) as exc:
        raise errors.ModelLoadError(
            f"control model {entry.code!r} ({entry.path.name}) could not be loaded: {_one_line(exc)}"
        ) from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _from_single_file(entry: catalog_module.Entry, unet_config: Any, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel, ControlNetUnionModel
    from safetensors.torch import load_file

    state = load_file(str(entry.path)) if entry.path.suffix == ".safetensors" else _pickled(entry.path)
    if any(k.startswith(("control_model.", "input_blocks.")) for k in state):  # original (ldm) layout
        config = _derived_config(ControlNetModel, unet_config, {}) if entry.config is None else None
        with tempfile.TemporaryDirectory(prefix="picserve-controlnet-") as folder:
            if config is not None:
                (Path(folder) / "config.json").write_text(json.dumps(config, default=list))
            return ControlNetModel.from_single_file(
                str(entry.path), config=str(entry.config or folder), torch_dtype=dtype, local_files_only=True
            )
    cls = ControlNetUnionModel if "task_embedding" in state else ControlNetModel
    if entry.config is not None:
        config = cls.load_config(entry.config)
    else:
        config = _derived_config(cls, unet_config, {k: tuple(v.shape) for k, v in state.items()})
    model = cls.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        names = ", ".join([*missing[:2], *unexpected[:2]])
        raise errors.ModelLoadError(
            f"control model {entry.code!r} ({entry.path.name}) does not fit the main model's UNet: "
            f"{len(missing)} tensors missing and {len(unexpected)} unexpected ({names}); a ControlNet for "
            "another base model, or a layout picserve does not read (give its diffusers config folder in a "
            "sidecar `Config`)"
        )
    return model.to(dtype)


def _pickled(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else data


def _derived_config(cls: Any, unet_config: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """`cls`'s config from the main model's UNet config (what `from_unet` copies), with what the file's
    tensor shapes say instead where they say it."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(unet_config).items() if k in accepted}
    config["conditioning_channels"] = 3
    channels = [
        shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0]
        for i in range(8)
        if f"down_blocks.{i}.resnets.0.conv1.weight" in shapes
    ]
    if channels:
        config["block_out_channels"] = channels
        config["transformer_layers_per_block"] = [
            1
            + max(
                (
                    int(k.split(".")[5])
                    for k in shapes
                    if k.startswith(f"down_blocks.{i}.attentions.0.transformer_blocks.")
                ),
                default=0,
            )
            for i in range(len(channels))
        ]
    if embedding := [
        shapes[k][0]
        for k in sorted(shapes)
        if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight")
    ]:
        config["conditioning_embedding_out_channels"] = [
            shapes["controlnet_cond_embedding.conv_in.weight"][0],
            *embedding[1::2],
        ]
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        config["conditioning_channels"] = shapes["controlnet_cond_embedding.conv_in.weight"][1]
    if "add_embedding.linear_1.weight" in shapes:
        config["projection_class_embeddings_input_dim"] = shapes["add_embedding.linear_1.weight"][1]
    if "task_embedding" in shapes:  # a ControlNet-Union
        config["num_control_type"] = shapes["task_embedding"][0]
        config["num_trans_channel"] = shapes["task_embedding"][1]
        config["num_proj_channel"] = shapes["task_embedding"][1]
        config["num_trans_layer"] = 1 + max(
            (int(k.split(".")[1]) for k in shapes if k.startswith("transformer_layes.")), default=0
        )
    return config


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def pipeline_class(mode: str, union: bool) -> Any:
    """The diffusers SDXL ControlNet pipeline for `mode` (txt2img, img2img, inpaint)."""
    import diffusers

    name = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[mode]
    return getattr(diffusers, f"StableDiffusionXLControlNet{'Union' if union else ''}{name}Pipeline")


#: shapes one unit's residuals: (down residuals, mid residual) → the same, shaped
Shaper = Callable[[list[torch.Tensor], torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]


def shapers(units: Sequence[domain.ControlUnit], masks: Sequence[Image.Image | None], cfg: bool) -> list[Shaper | None]:
    """What each unit's residuals go through: its mask, its control mode (see the module doc); None for
    a balanced unit with no mask (residuals as diffusers makes them)."""
    out: list[Shaper | None] = []
    for unit, mask in zip(units, masks, strict=True):
        if mask is None and unit.control_mode == "Balanced":
            out.append(None)
            continue
        weights = torch.from_numpy(_mask_array(mask)) if mask is not None else None
        out.append(
            _shaper(
                weights,
                soft=unit.control_mode != "Balanced",
                cond_only=cfg and unit.control_mode == "ControlNetMoreImportant",
            )
        )
    return out


def _mask_array(mask: Image.Image) -> Any:
    import numpy as np

    return (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]


def _shaper(mask: torch.Tensor | None, soft: bool, cond_only: bool) -> Shaper:
    def shape(down: list[torch.Tensor], mid: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        residuals = [*down, mid]
        if soft:  # 0.1 … 1 from the shallowest residual to the middle block (diffusers' guess-mode weights)
            scales = torch.logspace(-1, 0, len(residuals)).tolist()
            residuals = [r * s for r, s in zip(residuals, scales, strict=True)]
        if mask is not None:
            residuals = [r * _resized(mask, r) for r in residuals]
        if cond_only:  # the unconditional half of the batch (first) gets none
            half = residuals[0].shape[0] // 2
            residuals = [torch.cat([torch.zeros_like(r[:half]), r[half:]]) for r in residuals]
        return residuals[:-1], residuals[-1]

    return shape


def _resized(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(mask, size=like.shape[-2:], mode="area")
    return resized.to(device=like.device, dtype=like.dtype)


class _Shaping:
    """The per-unit forward of `ShapedControlNets`, for the plain and the Union multi-model alike: the
    pipelines call it with one list per unit for each name in `per_unit` (the Union's also carry its
    control types), and the rest shared by every unit."""

    nets: Any
    unit_shapers: list[Shaper | None]
    #: the arguments that hold one value per unit
    per_unit: ClassVar[tuple[str, ...]] = ("controlnet_cond", "conditioning_scale")
    #: the Union's nets are told they run in a multi-model
    from_multi: ClassVar[bool] = False

    def forward(self, sample: Any, timestep: Any, **given: Any) -> tuple[Any, Any]:
        lists = {name: given.pop(name) for name in self.per_unit}
        shared = {**given, "sample": sample, "timestep": timestep}
        if self.from_multi:
            shared["from_multi"] = True
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for i, (net, shape) in enumerate(zip(self.nets, self.unit_shapers, strict=True)):
            if lists["conditioning_scale"][i] == 0.0:
                continue  # outside its step range (or weight 0): not run, as A1111 skips it
            down, mid = net(**{name: values[i] for name, values in lists.items()}, **shared)
            if shape is not None:
                down, mid = shape(list(down), mid)
            if down_total is None or mid_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [a + b for a, b in zip(down_total, down, strict=True)]
                mid_total = mid_total + mid
        return down_total, mid_total


def _shaped_classes() -> tuple[Any, Any]:
    from diffusers.models import MultiControlNetModel
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel

    class Shaped(_Shaping, MultiControlNetModel):  # type: ignore[misc]
        pass

    class ShapedUnion(_Shaping, MultiControlNetUnionModel):  # type: ignore[misc]
        per_unit = ("controlnet_cond", "control_type", "control_type_idx", "conditioning_scale")
        from_multi = True

    return Shaped, ShapedUnion


_CLASSES: tuple[Any, Any] | None = None


def ShapedControlNets(models: Sequence[Any], unit_shapers: Sequence[Shaper | None], union: bool) -> Any:
    """A multi-ControlNet (plain or Union) over `models`, one per unit (a model used by two units is
    listed twice), that shapes each unit's residuals by `unit_shapers`."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _shaped_classes()
    cls = _CLASSES[1 if union else 0]
    multi = cls(list(models))
    multi.unit_shapers = list(unit_shapers)
    return multi


def control_image(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """A control map brought to width×height by the unit's resize mode (A1111's three), RGB."""
    return reference_images.fit(image.convert("RGB"), width, height, resize_mode)


#: a preprocessor run: (code, image, InferenceParams) → the control map
MapMaker = Callable[[str, Image.Image, dict[str, Any]], Image.Image]


@dataclass
class Control:
    """A generation's active ControlNet units, their control maps and masks at the generation size."""

    units: list[domain.ControlUnit]
    #: the control map of each active unit (what the ControlNet sees), width×height
    maps: list[Image.Image]
    masks: list[Image.Image | None]
    #: (the unit's index in the request, the unit), for the active ones
    numbered: list[tuple[int, domain.ControlUnit]]

    @property
    def union(self) -> bool:
        return bool(self.units) and self.units[0].model_type == "union"

    def pipeline(self, base: Any, mode: str, held: Sequence[LoadedControl], cfg: bool) -> Any:
        """The mode's SDXL ControlNet pipeline on `base`'s modules, with every unit's control model."""
        from picserve.engine import precision

        multi = ShapedControlNets([c.model for c in held], shapers(self.units, self.masks, cfg), self.union)
        cls = pipeline_class(mode, self.union)
        pipe = cls.from_pipe(base, controlnet=multi, dtype=precision.module_dtypes(base)["unet"])
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def inputs(self, mode: str) -> dict[str, Any]:
        """The ControlNet pipeline's own arguments ({} with no active unit)."""
        if not self.units:
            return {}
        maps: dict[str, Any] = {"image" if mode == "txt2img" and not self.union else "control_image": list(self.maps)}
        if self.union:
            maps["control_mode"] = [UNION_TYPES.index(u.control_type or "canny") for u in self.units]
        return {
            **maps,
            "controlnet_conditioning_scale": [u.weight for u in self.units],
            "control_guidance_start": [u.start for u in self.units],
            "control_guidance_end": [u.end for u in self.units],
            "guess_mode": False,
        }


def prepare(spec: domain.GenerationSpec, width: int, height: int, make_map: MapMaker) -> Control:
    """The active units of `spec` (weight above 0, a step range that is not empty), each unit's control
    map (its preprocessor's output, brought to width×height by its resize mode) and mask."""
    units, maps, masks, numbered = [], [], [], []
    for i, unit in enumerate(spec.control_units):
        if unit.weight == 0 or unit.start >= unit.end or unit.model_type == "ipadapter":
            continue  # changes nothing: not run at all, so the image is the one without it (IP-Adapters: ipadapter.py)
        image = decoded(spec, unit.image_index, f"ControlNetList[{i}] image")
        if unit.preprocessor != "none":
            image = make_map(unit.preprocessor, image, dict(unit.preprocessor_params))
        maps.append(control_image(image, width, height, unit.resize_mode))
        masks.append(unit_mask(spec, unit, i, width, height))
        units.append(unit)
        numbered.append((i, unit))
    return Control(units, maps, masks, numbered)


def unit_mask(
    spec: domain.GenerationSpec, unit: domain.ControlUnit, i: int, width: int, height: int
) -> Image.Image | None:
    """Unit `i`'s mask (white: where it acts) at width×height by its resize mode, inverted if asked; None
    when it has none."""
    if unit.mask_index is None:
        return None
    from PIL import ImageOps

    drawn = decoded(spec, unit.mask_index, f"ControlNetList[{i}] mask")
    mask = reference_images.mask_for(drawn, width, height, unit.resize_mode)
    return ImageOps.invert(mask) if unit.invert_mask else mask


def decoded(spec: domain.GenerationSpec, index: int, what: str) -> Image.Image:
    """The spec's control image `index` (a unit's image or mask), decoded."""
    data = spec.control_images[index]
    assert data is not None, "the worker restores control images before generating (tasks/references.py)"
    return reference_images.decode(data, what)


#: A1111's names of the resize modes, as its ControlNet extension writes them in `parameters`
_RESIZE_NAMES = {"JustResize": "Just Resize", "CropAndResize": "Crop and Resize", "ResizeAndFill": "Resize and Fill"}
_MODE_NAMES = {
    "Balanced": "Balanced",
    "PromptMoreImportant": "My prompt is more important",
    "ControlNetMoreImportant": "ControlNet is more important",
}


def infotext_fields(spec: domain.GenerationSpec) -> dict[str, str]:
    """`ControlNet 0: "Module: canny, Model: …, Weight: 1, …"` per unit, as sd-webui-controlnet writes them
    in a PNG's `parameters`."""
    fields = {}
    for i, u in enumerate(spec.control_units):
        params = u.preprocessor_params
        parts = {
            "Module": u.preprocessor,
            "Model": u.model_code,
            "Weight": f"{u.weight:g}",
            "Resize Mode": _RESIZE_NAMES.get(u.resize_mode, u.resize_mode),
            "Processor Res": str(params.get("Resolution", 512)),
            "Threshold A": str(params.get("CannyLowThreshold", -1)),
            "Threshold B": str(params.get("CannyHighThreshold", -1)),
            "Guidance Start": f"{u.start:g}",
            "Guidance End": f"{u.end:g}",
            "Control Mode": _MODE_NAMES.get(u.control_mode, u.control_mode),
        }
        if u.control_type:
            parts["Control Type"] = u.control_type
        fields[f"ControlNet {i}"] = '"' + ", ".join(f"{k}: {v}" for k, v in parts.items()) + '"'
    return fields

"""ExtractContents' engine side (engine/segment.py) on a tiny random Segment Anything folder.

The model (tests/engine/sam_files.py) has SAM's architecture at toy sizes and random weights: what it
picks means nothing, but its masks are soft and varied, so the rules around it show: which of SAM's
outputs is taken, the points pinned, the finishing shared with RemoveBackground (cutout.finish).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from picserve import catalog, domain_tools, errors
from picserve.engine import cutout, pipelines, segment
from tests.engine.sam_files import write_not_sam, write_tiny_sam, write_truncated_sam


def picture(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A light ellipse on a dark ground, with a grey square."""
    width, height = size
    image = Image.new("RGB", size, (20, 24, 28))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.3, height * 0.25, width * 0.7, height * 0.75), fill=(236, 230, 220))
    draw.rectangle((width * 0.05, height * 0.05, width * 0.2, height * 0.25), fill=(128, 128, 128))
    return image


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"))


Points = Sequence[tuple[int, int]]


def extract(
    sam: tuple[Any, Any], image: Image.Image, include: Points, exclude: Points = (), **settings: Any
) -> Image.Image:
    return segment.extract(sam[0], sam[1], image, include, exclude, **settings)


def predict(sam: tuple[Any, Any], image: Image.Image, include: Points, exclude: Points = ()) -> segment.Segmentation:
    return segment.predict(sam[0], sam[1], image, include, exclude)


def mask_of(sam: tuple[Any, Any], image: Image.Image, include: Points, exclude: Points = ()) -> np.ndarray:
    return segment.segment(sam[0], sam[1], image, include, exclude)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("segment") / "models"
    folder = root / "segment"
    tiny = write_tiny_sam(folder / "tiny")
    write_not_sam(folder / "clip")
    write_truncated_sam(tiny, folder / "truncated")
    (folder / "hq").mkdir()
    (folder / "hq" / "config.json").write_text(json.dumps({"model_type": "sam_hq"}))
    (folder / "bad-json").mkdir()
    (folder / "bad-json" / "config.json").write_text("{not json")
    (folder / "no-weights").mkdir()
    shutil.copy(tiny / "config.json", folder / "no-weights" / "config.json")
    partial = folder / "partial"
    shutil.copytree(tiny, partial)
    weights = load_file(str(partial / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("mask_decoder.")}, str(partial / "model.safetensors")
    )
    other_size = folder / "other-size"
    shutil.copytree(tiny, other_size)
    processor = json.loads((other_size / "preprocessor_config.json").read_text())
    processor["pad_size"] = {"height": 64, "width": 64}
    (other_size / "preprocessor_config.json").write_text(json.dumps(processor))
    no_processor = folder / "no-processor"
    shutil.copytree(tiny, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    return root


@pytest.fixture(scope="module")
def segmenters(models) -> segment.PointSegmenters:
    return segment.PointSegmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"), torch.float16)


@pytest.fixture(scope="module")
def sam(segmenters) -> tuple[Any, Any]:
    return segmenters.get("tiny")


# -- models -----------------------------------------------------------------------------------------


def test_a_folder_loads_on_the_cpu_in_fp32_once(segmenters, sam):
    model, processor = sam
    assert type(model).__name__ == "SamModel" and type(processor).__name__ == "SamProcessor"
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    assert segmenters.get("tiny") is sam and "tiny" in segmenters.loaded()


def test_a_half_precision_model_keeps_its_prompt_encoder_and_decoder_in_fp32(models):
    """The CUDA path (the image encoder in the engine's dtype), on the CPU."""
    model, processor = segment.load("tiny", models / "segment" / "tiny", "cpu", torch.bfloat16)
    assert next(model.vision_encoder.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in model.mask_decoder.parameters()} == {torch.float32}
    assert {p.dtype for p in model.prompt_encoder.parameters()} == {torch.float32}
    found = segment.predict(model, processor, picture(), [(80, 60), (40, 30)], [(5, 5)])
    assert found.mask.shape == (120, 160) and found.mask[60, 80] == 255 and found.mask[5, 5] == 0


def test_a_folder_without_a_processor_config_gets_sams_own(segmenters, sam):
    model, processor = segmenters.get("no-processor")
    assert processor.image_processor.pad_size["height"] == 128
    image = picture()
    expected = mask_of(sam, image, [(80, 60)])
    assert np.array_equal(segment.segment(model, processor, image, [(80, 60)]), expected)


def test_a_changed_file_reloads_the_model(models):
    folder = models / "segment" / "reload"
    write_tiny_sam(folder)
    segmenters = segment.PointSegmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"), torch.float32, keep=1)
    first = segmenters.get("reload")
    assert segmenters.get("reload") is first
    write_tiny_sam(folder, seed=1)  # new weights: the folder's own mtime need not change
    os.utime(folder / "model.safetensors", ns=(1, 1))
    second = segmenters.get("reload")
    assert second is not first and segmenters.loaded() == ["reload"]
    segmenters.get("tiny")  # one place: the other goes
    assert segmenters.loaded() == ["tiny"]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("clip", "is a 'clip_vision_model' model, not Segment Anything"),
        ("hq", "SAM-HQ"),
        ("bad-json", "cannot be used"),
        ("truncated", "transformers cannot load truncated as SamModel"),
        ("no-weights", "transformers cannot load no-weights as SamModel"),
        ("partial", "lack"),
        ("other-size", "pads to 64x64, but the model takes 128x128"),
        ("gone", "no longer in models/segment"),
    ],
)
def test_an_unusable_folder_is_a_model_load_error_naming_it(segmenters, code, says):
    with pytest.raises(errors.ModelLoadError, match=f"'{code}'") as raised:
        segmenters.get(code)
    assert says in raised.value.message
    assert code not in segmenters.loaded()


def test_identify_classifies_a_sam_folder_and_refuses_others(models, tmp_path):
    facts = segment.identify(models / "segment" / "tiny")
    assert facts.kind == "segment" and facts.problem is None
    assert facts.details["model type"] == "sam" and facts.details["vision hidden size"] == 32
    assert facts.details["input size"] == 128 and int(facts.details["parameters"].replace(",", "")) > 10_000
    for name, says in [("clip", "'clip_vision_model'"), ("truncated", "cannot load"), ("hq", "SAM-HQ")]:
        refused = segment.identify(models / "segment" / name)
        assert refused.kind is None and refused.problem and says in refused.problem
        assert "point segmenter" not in refused.problem  # the folder is named by `models add`, not as a code
    (tmp_path / "file.bin").write_bytes(b"x")
    assert segment.identify(tmp_path / "file.bin").kind is None
    assert "no config.json" in str(segment.identify(tmp_path).problem)


# -- which mask -------------------------------------------------------------------------------------


def test_choose_prefers_masks_agreeing_with_every_point_then_the_best_iou():
    agree = np.array([[True, False], [True, True], [True, True]])
    assert segment.choose(agree, [0.9, 0.5, 0.7], single_first=False) == 2  # 0 scores best but misses a point
    # none agrees with both: those agreeing with the most points, then the IoU
    agree = np.array([[False, False], [True, False], [False, True]])
    assert segment.choose(agree, [0.9, 0.4, 0.6], single_first=False) == 2
    # several points: SAM's single-mask output (index 0) whenever it is among them, whatever the IoU
    agree = np.array([[True, True], [True, True], [False, True], [True, True]])
    assert segment.choose(agree, [0.2, 0.9, 0.95, 0.3], single_first=True) == 0
    agree = np.array([[True, False], [True, True], [False, True], [True, True]])
    assert segment.choose(agree, [0.99, 0.9, 0.95, 0.3], single_first=True) == 1


def reference_masks(
    sam: tuple[Any, Any], image: Image.Image, include: list[tuple[int, int]], exclude: list[tuple[int, int]]
) -> tuple[np.ndarray, list[float], list[str]]:
    """SAM's candidate logits at the image's size, through transformers' documented calls (the pixel
    values straight into the model): the single-mask output first for several points, then the three."""
    model, processor = sam
    points = [[x, y] for x, y in (*include, *exclude)]
    labels = [1] * len(include) + [0] * len(exclude)
    inputs = processor(images=image, input_points=[[points]], input_labels=[[labels]], return_tensors="pt")
    inputs["input_points"] = inputs["input_points"].float()
    logits: list[np.ndarray] = []
    ious: list[float] = []
    names: list[str] = []
    options = ([False] if len(points) > 1 else []) + [True]
    with torch.no_grad():
        for multimask in options:
            out = model(**inputs, multimask_output=multimask)
            full = processor.image_processor.post_process_masks(
                out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
            )[0][0]
            logits.extend(full.numpy())
            ious.extend(out.iou_scores[0, 0].tolist())
            names.extend([f"multimask {i}" for i in range(3)] if multimask else ["single"])
    return np.stack(logits), ious, names


@pytest.mark.parametrize(
    ("include", "exclude"),
    [([(80, 60)], []), ([(80, 60)], [(10, 10)]), ([(80, 60), (60, 50)], [(10, 10), (150, 110)])],
)
def test_the_mask_is_sams_chosen_output_as_a_sigmoid(sam, include, exclude):
    image = picture()
    found = predict(sam, image, include, exclude)
    logits, ious, names = reference_masks(sam, image, include, exclude)
    labels = [True] * len(include) + [False] * len(exclude)
    agree = np.array(
        [[(lg[y, x] > 0) == want for (x, y), want in zip([*include, *exclude], labels, strict=True)] for lg in logits]
    )
    counts = agree.sum(axis=1)
    best = [k for k in range(len(names)) if counts[k] == counts.max()]
    expected = best[0] if names[best[0]] == "single" else max(best, key=lambda k: ious[k])
    assert found.output == names[expected] and found.iou == pytest.approx(ious[expected], abs=1e-6)
    assert found.agreed == bool(agree[expected].all())
    soft = np.round(255 / (1 + np.exp(-logits[expected].astype(np.float64))))
    keep, drop = segment.point_masks(image.size, include, exclude)
    away = ~(keep | drop)
    assert np.abs(found.mask[away].astype(int) - soft[away]).max() <= 1
    assert found.model_size == (32, 24)  # SAM's 32² mask over the 128x96 the image became


@pytest.mark.parametrize("seed", range(6))
def test_include_points_are_inside_and_exclude_points_outside(sam, seed):
    rng = np.random.default_rng(seed)
    image = picture((150, 110))
    xs, ys = rng.integers(0, image.width, 7), rng.integers(0, image.height, 7)
    points = [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]
    include, exclude = points[: 1 + seed % 3], points[3 : 3 + seed % 4]
    exclude = [p for p in exclude if p not in include]
    mask = mask_of(sam, image, include, exclude)
    assert mask.shape == (110, 150) and mask.dtype == np.uint8
    for hair in ("off", "on"):
        cut = alpha(extract(sam, image, include, exclude, hair=hair, erode_size=9))
        for x, y in include:
            assert mask[y, x] == 255 and cut[y, x] == 255
        for x, y in exclude:
            assert mask[y, x] == 0 and cut[y, x] == 0


def test_an_exclude_disc_never_covers_an_include_point():
    keep, drop = segment.point_masks((20, 20), [(5, 5), (0, 19)], [(6, 5), (0, 18)], radius=2)
    assert keep[5, 5] and not drop[5, 5]  # the include point's own pixel, inside the exclude disc
    assert keep[5, 6] and drop[5, 6]  # the exclude point, inside the include disc: drop is applied last
    assert not drop[19, 0] and drop[18, 0]
    assert keep.sum() > 13 and drop.sum() > 13  # discs of radius 2, clipped at the border


@pytest.mark.parametrize(
    ("include", "exclude", "field"),
    [
        ([], [], "IncludePointList"),
        ([(160, 10)], [], "IncludePointList[0]"),
        ([(5, 5)], [(5, -1)], "ExcludePointList[0]"),
    ],
)
def test_points_outside_the_image_are_refused(sam, include, exclude, field):
    with pytest.raises(errors.GenerationError, match=field.replace("[", r"\[")):
        mask_of(sam, picture(), include, exclude)


# -- the cut-out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hair", ["off", "on", "auto"])
@pytest.mark.parametrize("size", [(160, 120), (300, 90), (64, 200)])
def test_only_mask_is_the_alpha_of_the_cut_out_at_the_inputs_size(sam, hair, size):
    image = picture(size)
    points: dict[str, Any] = {"include": [(size[0] // 2, size[1] // 2)], "exclude": [(2, 2)]}
    settings: dict[str, Any] = {"hair": hair, "erode_size": 5, "foreground_threshold": 230, "background_threshold": 20}
    cut = extract(sam, image, **points, **settings)
    mask = extract(sam, image, **points, only_mask=True, **settings)
    assert (cut.mode, cut.size, mask.mode, mask.size) == ("RGBA", size, "L", size)
    assert np.array_equal(np.asarray(mask), alpha(cut))
    assert np.all(np.asarray(cut)[alpha(cut) == 0] == 0)


def test_auto_hair_mattes_exactly_when_the_mask_is_soft(sam):
    image = picture()
    found = predict(sam, image, [(80, 60)])
    on, off, auto = (alpha(extract(sam, image, [(80, 60)], hair=h, erode_size=3)) for h in ("on", "off", "auto"))
    assert not np.array_equal(on, off)
    soft = cutout.is_soft(found.mask, found.model_size)
    assert np.array_equal(auto, on if soft else off)


def test_raising_the_foreground_threshold_never_grows_the_opaque_area(sam):
    image = picture()
    settings: dict[str, Any] = {"hair": "on", "erode_size": 3, "background_threshold": 10}
    cuts = [alpha(extract(sam, image, [(80, 60)], foreground_threshold=t, **settings)) for t in (64, 160, 230, 255)]
    opaque = [cut == 255 for cut in cuts]
    assert all(not np.any(later & ~earlier) for earlier, later in itertools.pairwise(opaque))
    assert opaque[0].sum() > opaque[-1].sum() > 0  # the threshold did something; the point's disc stays
    off = [alpha(extract(sam, image, [(80, 60)], hair="off", foreground_threshold=t)) for t in (64, 255)]
    assert np.array_equal(off[0], off[1])  # without matting the thresholds change nothing


def test_an_input_with_transparency_keeps_it_as_a_product(sam):
    image = picture()
    own = np.tile(np.linspace(0, 255, image.width).round().astype(np.uint8), (image.height, 1))
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(own, "L"))
    for hair in ("off", "on"):
        plain = alpha(extract(sam, image, [(80, 60)], hair=hair)).astype(np.uint16)
        cut = alpha(extract(sam, rgba, [(80, 60)], hair=hair))
        assert np.array_equal(cut, ((plain * own + 127) // 255).astype(np.uint8))


def test_a_bad_hair_mode_is_refused(sam):
    with pytest.raises(errors.GenerationError, match="HairOptimization"):
        extract(sam, picture(), [(80, 60)], hair="maybe")


# -- the pipeline -----------------------------------------------------------------------------------


def spec_of(picture: Image.Image, **fields: Any) -> domain_tools.ExtractSpec:
    """An ExtractContents spec."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    values = {
        "width": picture.width,
        "height": picture.height,
        "model_code": "tiny",
        "include": ((80, 60),),
        "exclude": (),
        "erode_size": 15,
        "foreground_threshold": 240,
        "background_threshold": 15,
        "hair": "auto",
        "only_mask": False,
        "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "image_key": None,
    }
    return domain_tools.ExtractSpec(**{**values, **fields})


def test_the_pipeline_cuts_out_the_image_by_its_points(segmenters, sam):
    assert pipelines.PIPELINES["extract"] is segment.run
    image = picture()
    steps: list[float] = []
    previews: list[Image.Image] = []
    engine = cast(Any, types.SimpleNamespace(point_segmenters=segmenters))
    spec = spec_of(image, exclude=((5, 5),), hair="off")
    generated = segment.run(engine, spec, steps.append, lambda make: previews.append(make()))
    assert [(r.mode, r.size) for r in generated.images] == [("RGBA", image.size)]
    assert generated.infotexts == [""] and steps == [0.0, 1.0]
    assert [p.mode for p in previews] == ["RGB"]
    expected = extract(sam, image, [(80, 60)], [(5, 5)], hair="off")
    assert np.array_equal(np.asarray(generated.images[0]), np.asarray(expected))
    masks = segment.run(engine, spec_of(image, exclude=((5, 5),), hair="off", only_mask=True), lambda _: None, None)
    assert np.array_equal(np.asarray(masks.images[0]), alpha(expected))


def test_an_engine_without_point_segmenters_or_a_spec_without_image_refuses(segmenters):
    with pytest.raises(errors.GenerationError, match="does no point segmentation"):
        segment.run(cast(Any, types.SimpleNamespace()), spec_of(picture()), lambda _: None, None)
    engine = cast(Any, types.SimpleNamespace(point_segmenters=segmenters))
    with pytest.raises(errors.GenerationError, match="no longer in the store"):
        segment.run(engine, spec_of(picture(), image=None), lambda _: None, None)
    with pytest.raises(errors.ModelLoadError, match="'gone'"):
        segment.run(engine, spec_of(picture(), model_code="gone"), lambda _: None, None)

"""ControlNet preprocessors: the table (picserve/preprocessors.py) and the maps (engine/preprocess.py).

The model-free maps are checked against the formulas users know (canny is OpenCV's `cv2.Canny` on the
image resized A1111's way, exactly; shuffle is controlnet_aux's ContentShuffleDetector's field). The
annotator path is checked on controlnet_aux's own line-art network at random init saved as
`sk_model.pth`, and the transformers path on a tiny random Depth Anything folder
(tests/engine/preprocessor_files.py): loading from models/preprocessor/, caching, reloading, errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from picserve import errors, preprocessors
from picserve.engine import preprocess
from tests.engine.preprocessor_files import (
    aux,
    write_lineart,
    write_not_a_checkpoint,
    write_tiny_depth_model,
    write_unrelated_model_folder,
)

MODEL_FREE = [code for code, p in preprocessors.PREPROCESSORS.items() if p.model_free]


def scene(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """Shapes with hard and soft edges on a gradient: something every map has lines and depth in."""
    width, height = size
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    image = Image.fromarray(ramp.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width * 0.1, height * 0.2, width * 0.4, height * 0.7), fill=(230, 30, 30))
    draw.ellipse((width * 0.5, height * 0.3, width * 0.85, height * 0.9), fill=(20, 60, 220))
    draw.line((0, height - 5, width, 5), fill=(250, 250, 250), width=3)
    return image


def short_side(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    k = resolution / min(size)
    return round(size[0] * k), round(size[1] * k)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preprocess") / "models"
    folder = root / preprocessors.FOLDER
    write_lineart(folder / "sk_model.pth", seed=1)
    write_lineart(folder / "sk_model2.pth", seed=2)
    write_tiny_depth_model(folder / "depth-anything-tiny")
    write_unrelated_model_folder(folder / "a-bert")
    write_not_a_checkpoint(folder / "netG.pth")  # lineart_anime's file name, not loadable
    return root


@pytest.fixture
def empty(tmp_path) -> Path:
    return tmp_path / "models"


# -- canny -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resolution", "low", "high"), [(512, 100, 200), (128, 50, 150), (200, 100, 200)])
def test_canny_is_opencv_canny_at_the_resolution_exactly(empty, resolution, low, high):
    image = scene()
    params = {"CannyLowThreshold": low, "CannyHighThreshold": high, "Resolution": resolution}
    got = preprocess.control_map("canny", image, params, empty)
    size = short_side(image.size, resolution)
    rgb = np.asarray(image)
    interpolation = cv2.INTER_CUBIC if resolution > min(image.size) else cv2.INTER_AREA
    small = rgb if size == image.size else cv2.resize(rgb, size, interpolation=interpolation)
    edges = cv2.Canny(small, low, high)
    assert (got.mode, got.size) == ("RGB", size)
    assert np.array_equal(np.asarray(got), np.stack([edges] * 3, axis=2))
    assert set(np.unique(edges)) == {0, 255}  # white edges on black


def test_resolution_decides_the_size_the_map_is_made_at(empty):
    image = scene((300, 200))
    sizes = {r: preprocess.control_map("canny", image, {"Resolution": r}, empty).size for r in (64, 256, 0)}
    assert sizes == {64: (96, 64), 256: (384, 256), 0: (300, 200)}
    # the defaults come from the table: 512 on the short side, thresholds 100/200
    default = preprocess.control_map("canny", image, {}, empty)
    explicit = preprocess.control_map("canny", image, dict(preprocessors.PREPROCESSORS["canny"].params), empty)
    assert default.size == (768, 512) and np.array_equal(np.asarray(default), np.asarray(explicit))
    # higher thresholds keep fewer edges
    lax = np.asarray(preprocess.control_map("canny", image, {"CannyLowThreshold": 10, "CannyHighThreshold": 30}, empty))
    assert (lax > 0).sum() > (np.asarray(default) > 0).sum()


# -- the other model-free maps ------------------------------------------------------------------------


@pytest.mark.parametrize("code", MODEL_FREE)
def test_each_model_free_map_runs_and_is_rgb(empty, code):
    image = scene((150, 100))
    got = preprocess.control_map(code, image, {"Resolution": 128}, empty)
    reads_resolution = "Resolution" in preprocessors.PREPROCESSORS[code].params
    assert got.mode == "RGB"
    assert got.size == (short_side(image.size, 128) if reads_resolution else image.size)
    assert 0 < np.asarray(got).std()  # a map, not a blank


def test_the_image_and_invert_and_recolor_maps_follow_a1111(empty):
    image = scene((150, 100))
    rgb = np.asarray(image)
    assert np.array_equal(np.asarray(preprocess.control_map("none", image, {}, empty)), rgb)
    assert np.array_equal(np.asarray(preprocess.control_map("invert", image, {}, empty)), 255 - rgb)
    luminance = np.asarray(preprocess.control_map("recolor_luminance", image, {}, empty))
    assert np.array_equal(luminance[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_BGR2LAB)[:, :, 0])
    intensity = np.asarray(preprocess.control_map("recolor_intensity", image, {}, empty))
    assert np.array_equal(intensity[:, :, 1], rgb.max(axis=2))  # HSV's V
    darker = np.asarray(preprocess.control_map("recolor_intensity", image, {"GammaCorrection": 2.0}, empty))
    assert (darker <= intensity).all() and (darker < intensity).any()
    tile = preprocess.control_map("tile_resample", image, {"DownSamplingRate": 2.0}, empty)
    assert tile.size == (75, 50)
    assert preprocess.control_map("tile_resample", image, {"DownSamplingRate": 1.05}, empty).size == (150, 100)


def test_scribble_xdog_draws_more_lines_at_a_lower_threshold(empty):
    image = scene((150, 100))
    white = [
        (np.asarray(preprocess.control_map("scribble_xdog", image, {"XDoGThreshold": t}, empty)) > 0).sum()
        for t in (4, 32, 64)
    ]
    assert white[0] > white[1] > white[2] > 0


def test_shuffle_is_controlnet_aux_content_shuffle_and_its_seed_fixes_it(empty):
    image = scene((192, 128))  # multiples of 64 at Resolution 128: controlnet_aux resizes nothing either
    ours = np.asarray(preprocess.control_map("shuffle", image, {"Resolution": 128, "Seed": 7}, empty))
    np.random.seed(7)
    theirs = aux("shuffle").ContentShuffleDetector()(
        np.asarray(image), detect_resolution=128, image_resolution=128, output_type="np"
    )
    assert np.array_equal(ours, theirs)
    again = np.asarray(preprocess.control_map("shuffle", image, {"Resolution": 128, "Seed": 7}, empty))
    other = np.asarray(preprocess.control_map("shuffle", image, {"Resolution": 128, "Seed": 8}, empty))
    assert np.array_equal(ours, again) and not np.array_equal(ours, other)


def test_transparency_is_composited_over_white(empty):
    clear = Image.new("RGBA", (64, 48), (10, 200, 30, 0))
    assert (np.asarray(preprocess.control_map("none", clear, {}, empty)) == 255).all()
    grey = Image.new("L", (64, 48), 90)
    assert np.asarray(preprocess.control_map("none", grey, {}, empty)).shape == (48, 64, 3)


# -- the table: available, missing, parameters --------------------------------------------------------


def test_without_files_only_the_model_free_ones_are_available(empty):
    assert list(preprocessors.available(empty)) == MODEL_FREE
    assert {"none", "canny", "shuffle", "invert", "lineart_standard"} <= set(MODEL_FREE)
    assert all(preprocessors.missing(code, empty) is None for code in MODEL_FREE)
    assert preprocessors.missing("depth", empty) == (
        "its model files are not installed: put dpt_hybrid-midas-501f0c75.pt (from lllyasviel/Annotators) "
        "in models/preprocessor/"
    )
    assert "put body_pose_model.pth, hand_pose_model.pth and facenet.pth" in preprocessors.missing(
        "openpose_full", empty
    )
    says = preprocessors.missing("depth_anything", empty)
    assert "depth-estimation model" in says and "models/preprocessor/" in says and "depth_anything" in says


def test_an_unknown_code_lists_the_known_ones(empty):
    says = preprocessors.missing("canny_edge", empty)
    assert says.startswith("no such preprocessor (known: none, canny, ")
    assert all(code in says for code in preprocessors.PREPROCESSORS)
    with pytest.raises(errors.ModelLoadError, match="'canny_edge': no such preprocessor"):
        preprocess.control_map("canny_edge", scene(), {}, empty)


def test_files_make_their_preprocessors_available(models, tmp_path):
    usable = preprocessors.available(models)
    assert {"lineart", "lineart_coarse", "depth_anything", "lineart_anime"} <= set(usable)
    assert "depth" not in usable and "openpose" not in usable
    assert preprocessors.depth_model_folder(models).name == "depth-anything-tiny"  # not the bert folder
    # openpose_full with the body model alone: only the other two are named
    folder = tmp_path / "models" / preprocessors.FOLDER
    write_not_a_checkpoint(folder / "body_pose_model.pth")
    assert preprocessors.missing("openpose", tmp_path / "models") is None
    assert preprocessors.missing("openpose_full", tmp_path / "models").endswith(
        "put hand_pose_model.pth and facenet.pth (from lllyasviel/Annotators) in models/preprocessor/"
    )
    # a folder of another model type is no depth model
    write_unrelated_model_folder(folder / "bert")
    assert preprocessors.depth_model_folder(tmp_path / "models") is None


def test_every_entry_is_consistent():
    union = {"openpose", "depth", "softedge", "canny", "normal", "segment", "tile"}
    for code, p in preprocessors.PREPROCESSORS.items():
        assert p.code == code and p.name
        assert p.control_type is None or p.control_type in union
        assert set(p.params) | set(p.extra) <= set(preprocessors.PARAMS)
        assert preprocessors.bad_params(code, dict(p.params)) is None  # the defaults are in range
        assert code == "none" or p.pairs
    assert preprocessors.PREPROCESSORS["canny"].params == {
        "CannyLowThreshold": 100,
        "CannyHighThreshold": 200,
        "Resolution": 512,
    }
    assert preprocessors.PREPROCESSORS["openpose"].pairs == ("openpose", "pose")


@pytest.mark.parametrize(
    ("code", "params", "says"),
    [
        ("canny", {"Resolution": 5000}, "Resolution must be an integer from 64 to 2048 (or 0: the image's own)"),
        ("canny", {"Resolution": 32}, "got 32"),
        ("canny", {"CannyLowThreshold": "low"}, "CannyLowThreshold must be an integer from 1 to 255, got 'low'"),
        ("canny", {"CannyHighThreshold": 12.5}, "CannyHighThreshold must be an integer"),
        ("canny", {"Resolution": True}, "Resolution must be an integer"),
        ("recolor_luminance", {"GammaCorrection": 3}, "GammaCorrection must be a number from 0.1 to 2, got 3"),
        ("canny", {"Resolution": 0, "CannyLowThreshold": 20.0, "Other": "x"}, None),  # 0, integral float, unknown
        ("recolor_luminance", {"Resolution": 5000}, None),  # not a field recolor reads
    ],
)
def test_bad_params_names_the_field_and_its_range(code, params, says, empty):
    problem = preprocessors.bad_params(code, params)
    assert problem == says if says is None else says in problem
    if says is not None:
        with pytest.raises(errors.ParamError, match=f"preprocessor '{code}'"):
            preprocess.control_map(code, scene((64, 64)), params, empty)


# -- the annotators: controlnet_aux over the operator's files -------------------------------------------


def test_lineart_loads_controlnet_aux_generator_from_the_folder_and_runs(models):
    cache = preprocess.Preprocessors(models)
    image = scene((150, 100))
    got = cache.control_map("lineart", image, {"Resolution": 96})
    assert (got.mode, got.size) == ("RGB", short_side(image.size, 96))  # the aspect kept, not 64-rounded
    assert cache.loaded() == ["lineart"]
    array = np.asarray(got)
    assert np.array_equal(array[:, :, 0], array[:, :, 2]) and array.std() > 0
    # the very network in the file made it: controlnet_aux's detector on the same padded input agrees
    lineart = aux("lineart")
    network = lineart.Generator(3, 1, 3)
    network.load_state_dict(torch.load(models / preprocessors.FOLDER / "sk_model.pth"))
    small = preprocess.resized(np.asarray(image), 96)
    padded = np.pad(small, [[0, -small.shape[0] % 64], [0, -small.shape[1] % 64], [0, 0]], mode="edge")
    side = min(padded.shape[:2])
    theirs = lineart.LineartDetector(network.eval(), network)(padded, detect_resolution=side, image_resolution=side)
    assert np.array_equal(array, np.asarray(theirs)[: small.shape[0], : small.shape[1]])


def test_detectors_are_cached_reloaded_on_change_and_least_recently_used_out(models, tmp_path):
    folder = tmp_path / "models" / preprocessors.FOLDER
    folder.mkdir(parents=True)
    for name in ("sk_model.pth", "sk_model2.pth"):
        os.link(models / preprocessors.FOLDER / name, folder / name)
    cache = preprocess.Preprocessors(tmp_path / "models", max_loaded=1)
    first = cache.get("lineart")
    assert cache.get("lineart") is first
    os.utime(folder / "sk_model.pth", ns=(1, 1))  # a new version of the file
    second = cache.get("lineart")
    assert second is not first and cache.loaded() == ["lineart"]
    cache.get("lineart_coarse")
    assert cache.loaded() == ["lineart_coarse"]
    cache.clear()
    assert cache.loaded() == []


def test_a_missing_or_broken_file_is_a_model_load_error(models, empty):
    with pytest.raises(errors.ModelLoadError) as raised:
        preprocess.control_map("depth", scene(), {}, empty)
    assert raised.value.message == f"preprocessor 'depth': {preprocessors.missing('depth', empty)}"
    with pytest.raises(errors.ModelLoadError, match=r"'lineart_anime': netG.pth cannot be loaded"):
        preprocess.Preprocessors(models).control_map("lineart_anime", scene(), {})


def test_depth_anything_runs_a_transformers_depth_folder(models):
    cache = preprocess.Preprocessors(models)
    image = scene((150, 100))
    got = cache.control_map("depth_anything", image, {"Resolution": 64})
    assert (got.mode, got.size) == ("RGB", (96, 64))
    array = np.asarray(got)
    assert array.min() == 0 and array.max() == 255  # stretched over the whole range
    assert np.array_equal(array[:, :, 0], array[:, :, 1])
    assert cache.loaded() == ["depth_anything"]
    again = cache.control_map("depth_anything", image, {"Resolution": 64})
    assert np.array_equal(np.asarray(again), array)

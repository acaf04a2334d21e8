"""RemoveBackground's engine side (engine/cutout.py) on tiny ONNX segmenters that rembg runs.

The models (tests/engine/onnx_files.py) make bright pixels foreground and dark ones background, with a
soft ramp where the brightness ramps: a sharp white disc on black gives a hard mask edge, the same disc
blurred a soft one (an unknown band for alpha matting). rembg's home (U2NET_HOME) points at an empty
temp folder throughout, and its downloader is made to fail: every session comes from the models folder.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from picserve import catalog, domain, errors
from picserve.engine import cutout
from tests.engine.onnx_files import ISNET, write_not_onnx, write_tiny_segmenter, write_wrong_input_model


def disc(size: tuple[int, int], blur: float = 0.0, centre: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """A light disc (half the shorter side across) on a dark ground; `blur`: Gaussian radius in px."""
    width, height = size
    image = Image.new("RGB", size, (12, 16, 20))
    r = min(size) / 4
    cx, cy = centre[0] * width, centre[1] * height
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(244, 240, 236))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cutout") / "models"
    folder = root / "background"
    write_tiny_segmenter(folder / "tiny-u2net.onnx")
    write_tiny_segmenter(folder / "tiny-isnet.onnx", normalization=ISNET)
    write_tiny_segmenter(folder / "tiny-birefnet.onnx", sigmoid=False)
    write_tiny_segmenter(folder / "custom.onnx")
    (folder / "custom.json").write_text(json.dumps({"Session": "u2net_custom"}))
    write_not_onnx(folder / "broken-u2net.onnx")
    write_wrong_input_model(folder / "vector-u2net.onnx")
    write_tiny_segmenter(folder / "prompted.onnx")
    (folder / "prompted.json").write_text(json.dumps({"Session": "sam"}))
    return root


@pytest.fixture(scope="module", autouse=True)
def rembg_home(tmp_path_factory) -> Path:
    """rembg's model folder: an empty temp folder (never made); its downloader fails if anything calls it."""
    import pooch

    def refuse(*args, **kwargs):
        raise AssertionError(f"rembg tried to download {args[:1]}")

    home = tmp_path_factory.mktemp("rembg") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("U2NET_HOME", str(home))
        patch.setattr(pooch, "retrieve", refuse)
        yield home


@pytest.fixture(scope="module")
def segmenters(models) -> cutout.Segmenters:
    return cutout.Segmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"))


@pytest.fixture(scope="module")
def session(segmenters):
    return segmenters.get("tiny-u2net")


# -- sessions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["tiny-u2net", "tiny-isnet", "tiny-birefnet", "custom"])
def test_each_family_runs_the_local_file_and_restores_rembg_home(segmenters, code, rembg_home):
    session = segmenters.get(code)
    assert os.environ["U2NET_HOME"] == str(rembg_home)
    assert not rembg_home.exists()  # nothing was written there
    assert session.inner_session.get_providers() == ["CPUExecutionProvider"]
    family = {"custom": "u2net_custom", "tiny-isnet": "isnet-general-use", "tiny-birefnet": "birefnet-general"}
    assert session.model_name == family.get(code, "u2net")
    result = cutout.cut_out(session, disc((120, 90)), hair="off")
    assert (result.mode, result.size) == ("RGBA", (120, 90))
    a = alpha(result)
    assert a[45, 60] > 200 and a[2, 2] < 30  # the disc's middle is kept, the corner goes
    assert session.input_size == ((320, 320) if code in ("tiny-u2net", "custom") else (1024, 1024))


def test_a_model_is_loaded_once_reused_and_reloaded_when_its_file_changes(models):
    folder = models / "background"
    write_tiny_segmenter(folder / "reload-u2net.onnx")
    segmenters = cutout.Segmenters(catalog.Catalog(models, ttl=0), torch.device("cpu"), max_loaded=2)
    first = segmenters.get("reload-u2net")
    assert segmenters.get("reload-u2net") is first
    assert segmenters.loaded() == ["reload-u2net"]
    write_tiny_segmenter(folder / "reload-u2net.onnx", steepness=6.0)  # a new version: size or mtime differ
    os.utime(folder / "reload-u2net.onnx", ns=(1, 1))
    second = segmenters.get("reload-u2net")
    assert second is not first and segmenters.loaded() == ["reload-u2net"]
    segmenters.get("tiny-u2net")
    segmenters.get("reload-u2net")
    segmenters.get("tiny-isnet")  # three codes, two places: the least recently used goes
    assert segmenters.loaded() == ["reload-u2net", "tiny-isnet"]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("broken-u2net", "onnxruntime cannot load broken-u2net.onnx"),
        ("vector-u2net", "is no image segmenter: its input is features [1, 16]"),
        ("prompted", "'sam' is not supported"),
        ("gone", "no longer in models/background"),
    ],
)
def test_an_unusable_model_is_a_model_load_error_naming_it(segmenters, code, says):
    with pytest.raises(errors.ModelLoadError, match=f"'{code}'") as raised:
        segmenters.get(code)
    assert says in raised.value.message
    assert code not in segmenters.loaded()


# -- the cut-out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hair", ["off", "on", "auto"])
@pytest.mark.parametrize("box", [None, (20, 10, 90, 70)])
def test_only_mask_is_the_alpha_of_the_cut_out(session, hair, box):
    image = disc((128, 96), blur=6)
    settings = {"box": box, "hair": hair, "erode_size": 5, "foreground_threshold": 230, "background_threshold": 20}
    cut = cutout.cut_out(session, image, **settings)
    mask = cutout.cut_out(session, image, only_mask=True, **settings)
    assert (cut.mode, cut.size, mask.mode, mask.size) == ("RGBA", image.size, "L", image.size)
    assert np.array_equal(np.asarray(mask), alpha(cut))
    assert np.all(np.asarray(cut)[alpha(cut) == 0] == 0)  # nothing of the background leaks through


@pytest.mark.parametrize("hair", ["on", "off", "auto"])
def test_raising_the_foreground_threshold_never_grows_the_opaque_area(session, hair):
    image = disc((96, 72), blur=5)
    settings = {"hair": hair, "erode_size": 3, "background_threshold": 10}
    cuts = [
        cutout.cut_out(session, image, foreground_threshold=t, **settings) for t in (11, 64, 128, 192, 230, 245, 255)
    ]
    opaque = [int(np.count_nonzero(alpha(cut) == 255)) for cut in cuts]
    assert all(later <= earlier for earlier, later in itertools.pairwise(opaque)), opaque
    if hair == "on":
        assert opaque[0] > opaque[-1] > 0, opaque  # the thresholds did something


def test_matting_changes_a_soft_edge_and_auto_decides_by_the_edge(session):
    soft, hard = disc((128, 96), blur=8), disc((128, 96))
    off, on = (alpha(cutout.cut_out(session, soft, hair=h)) for h in ("off", "on"))
    band = (off > 0) & (off < 255)
    assert np.count_nonzero(band) > 500
    assert np.mean(np.abs(on[band].astype(int) - off[band])) > 10  # matting re-solved the soft band
    assert not np.any(on[:8, :8]) and not np.any(on[-8:, -8:])  # the far background stays out
    assert np.array_equal(alpha(cutout.cut_out(session, soft, hair="auto")), on)
    assert np.array_equal(
        alpha(cutout.cut_out(session, hard, hair="auto")), alpha(cutout.cut_out(session, hard, hair="off"))
    )
    size = session.input_size
    assert cutout.edge_width(cutout._predict(session, hard), size) < cutout.SOFT_EDGE_WIDTH
    assert cutout.edge_width(cutout._predict(session, soft), size) > cutout.SOFT_EDGE_WIDTH


def test_a_large_image_is_matted_scaled_down_with_the_same_guarantees(session, monkeypatch):
    image = disc((128, 96), blur=6)
    settings = {"hair": "on", "erode_size": 4, "background_threshold": 10}
    full = [alpha(cutout.cut_out(session, image, foreground_threshold=t, **settings)) for t in (128, 230)]
    monkeypatch.setattr(cutout, "MATTING_MAX_PIXELS", 64 * 48)  # a quarter of the pixels
    scaled = [alpha(cutout.cut_out(session, image, foreground_threshold=t, **settings)) for t in (128, 230)]
    mask = cutout.cut_out(session, image, foreground_threshold=230, only_mask=True, **settings)
    assert np.array_equal(np.asarray(mask), scaled[1])
    for f, s in zip(full, scaled, strict=True):
        assert np.array_equal(f == 255, s == 255)  # the full-size trimap pins the opaque area
        band = (f > 0) & (f < 255)
        assert np.mean(np.abs(f[band].astype(int) - s[band])) < 24
    assert np.count_nonzero(scaled[1] == 255) < np.count_nonzero(scaled[0] == 255)


@pytest.mark.parametrize("hair", ["off", "on"])
def test_nothing_outside_the_box_is_opaque(session, hair):
    image = disc((160, 120), blur=3)  # the disc: (50..110, 30..90)
    box = (40, 20, 85, 100)  # its left part only
    cut = alpha(cutout.cut_out(session, image, box=box, hair=hair, erode_size=3))
    outside = np.ones(cut.shape, dtype=bool)
    outside[20:100, 40:85] = False
    assert not np.any(cut[outside])
    assert np.count_nonzero(cut[20:100, 40:85] == 255) > 500
    whole = alpha(cutout.cut_out(session, image, hair=hair, erode_size=3))
    assert np.count_nonzero(whole[:, 85:] == 255) > 500  # without the box the right part was opaque


def test_an_input_with_transparency_keeps_it(session):
    image = disc((64, 48)).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 255).crop((0, 0, 64, 48)))
    pixels = np.asarray(image).copy()
    pixels[:, :32, 3] = 0
    cut = alpha(cutout.cut_out(session, Image.fromarray(pixels, "RGBA"), hair="off"))
    assert not np.any(cut[:, :32]) and np.any(cut[:, 32:] > 200)


# -- the pipeline -----------------------------------------------------------------------------------


def spec_of(images: list[Image.Image], **fields) -> domain.CutoutSpec:
    return domain.CutoutSpec(
        sizes=tuple(i.size for i in images),
        model_code="tiny-u2net",
        images=tuple(b64(i) for i in images),
        images_keys=tuple(None for _ in images),
        **fields,
    )


def test_a_batch_gives_one_result_per_input_in_order(segmenters):
    inputs = [disc((80, 60), centre=(0.3, 0.5)), disc((64, 64), blur=4), disc((50, 90), centre=(0.5, 0.7))]
    steps, previews = [], []
    engine = types.SimpleNamespace(segmenters=segmenters)
    generated = cutout.run(engine, spec_of(inputs, hair="off"), steps.append, lambda make: previews.append(make()))
    assert [r.size for r in generated.images] == [i.size for i in inputs]
    assert all(r.mode == "RGBA" for r in generated.images)
    assert generated.infotexts == ["", "", ""] and generated.seeds == []
    assert len(generated.pngs()) == 3
    assert steps == pytest.approx([1 / 3, 2 / 3, 1.0])
    # each result's subject is where its own input's disc is
    first, last = alpha(generated.images[0]), alpha(generated.images[2])
    assert first[30, 24] > 240 and first[30, 56] == 0
    assert last[63, 25] > 240 and last[20, 25] == 0
    assert [p.mode for p in previews] == ["RGB"] * 3 and max(previews[0].size) <= 128

    masks = cutout.run(engine, spec_of(inputs, hair="off", only_mask=True), lambda _: None, None)
    assert [np.asarray(m).tolist() for m in masks.images] == [alpha(r).tolist() for r in generated.images]


def test_cancel_after_the_first_image_stops_the_batch(segmenters, monkeypatch):
    calls = []
    real = cutout.cut_out
    monkeypatch.setattr(cutout, "cut_out", lambda *a, **k: calls.append(1) or real(*a, **k))

    def on_step(fraction: float) -> None:
        raise errors.TaskCanceled()

    engine = types.SimpleNamespace(segmenters=segmenters)
    with pytest.raises(errors.TaskCanceled):
        cutout.run(engine, spec_of([disc((40, 30)), disc((30, 40)), disc((20, 20))]), on_step, None)
    assert len(calls) == 1


def test_an_engine_without_segmenters_refuses(segmenters):
    with pytest.raises(errors.GenerationError, match="does no background removal"):
        cutout.run(types.SimpleNamespace(), spec_of([disc((20, 20))]), lambda _: None, None)

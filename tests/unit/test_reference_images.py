"""A1111's resize modes for every source and target size: the geometry over the whole range, and PIL."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from picserve import errors, reference_images
from picserve.reference_images import RESIZE_MODES, fit, mask_for, placement
from tests import fuzzing

#: any source image picserve decodes (one side may be a single pixel) and any requested size
SOURCE_SIDE = st.integers(1, 2560)
TARGET_SIDE = st.integers(64, 2560)
COLOUR = (200, 40, 90)


@settings(max_examples=1000, deadline=None)
@given(SOURCE_SIDE, SOURCE_SIDE, TARGET_SIDE, TARGET_SIDE, st.sampled_from(RESIZE_MODES))
def test_placement_is_inside_the_frame_for_every_size(src_w, src_h, width, height, mode):
    check_placement(src_w, src_h, width, height, mode)


def test_placement_for_every_source_width_into_small_frames():
    # exhaustively, the sizes whose fitted side lands one pixel short of the frame (the ValueError of old)
    for src_w in range(1, 2561):
        for src_h, width, height in ((128, 64, 64), (127, 64, 64), (2560, 64, 2560), (1, 2560, 64)):
            for mode in RESIZE_MODES:
                check_placement(src_w, src_h, width, height, mode)


def check_placement(src_w, src_h, width, height, mode):
    place = placement(src_w, src_h, width, height, mode)
    (x0, y0, x1, y1), (w, h), (left, top) = place.box, place.size, place.offset
    # the source part used is non-empty and inside the source
    assert 0 <= x0 < x1 <= src_w and 0 <= y0 < y1 <= src_h
    # what is pasted is non-empty and inside the frame; the bands around it are never negative
    assert 1 <= w <= width and 1 <= h <= height
    assert left >= 0 and top >= 0 and left + w <= width and top + h <= height
    if mode == "ResizeAndFill":
        assert w == width or h == height  # fitted inside: touches two opposite sides
        assert place.box == (0, 0, src_w, src_h)
        # the fitted size keeps the source's ratio to within the rounding of one side (or the 1 px floor)
        if w < width:
            assert w == max(1, round(height * src_w / src_h)) or abs(w - height * src_w / src_h) <= 0.5
        if h < height:
            assert h == max(1, round(width * src_h / src_w)) or abs(h - width * src_h / src_w) <= 0.5
    else:
        assert (w, h) == (width, height) and (left, top) == (0, 0)
    if mode == "CropAndResize":  # the cut has the frame's ratio and spans one whole side of the source
        assert (x1 - x0) * height == pytest.approx((y1 - y0) * width, rel=1e-9)
        assert (x0, x1) == (0, src_w) or (y0, y1) == (0, src_h)


@settings(max_examples=100, deadline=None)
@given(
    long_source=SOURCE_SIDE,
    short_source=st.integers(1, 40),
    long_target=TARGET_SIDE,
    short_target=st.integers(64, 100),
    source_is_wide=st.booleans(),
    target_is_wide=st.booleans(),
    mode=st.sampled_from(RESIZE_MODES),
)
def test_fit_gives_exactly_the_frame_for_any_ratio(
    long_source, short_source, long_target, short_target, source_is_wide, target_is_wide, mode
):
    # Every ratio over the whole range, with images that stay small in memory (one side short).
    source_size = (long_source, short_source) if source_is_wide else (short_source, long_source)
    width, height = (long_target, short_target) if target_is_wide else (short_target, long_target)
    out = fit(Image.new("RGB", source_size, COLOUR), width, height, mode)
    assert out.size == (width, height)
    pixels = np.asarray(out, dtype=np.int16)
    assert np.abs(pixels - COLOUR).max() <= 1  # every pixel comes from the image: no empty band is left
    assert mask_for(Image.new("L", source_size, 255), width, height, mode).getextrema() == (255, 255)


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize(
    ("source", "frame"),
    [
        ((126, 128), (64, 64)),  # fitted 63 wide in 64: a 0 px band on the left (once a ValueError)
        ((128, 126), (64, 64)),
        ((127, 128), (64, 64)),
        ((190, 128), (64, 64)),
        ((1, 2560), (2560, 64)),  # the widest frame from the tallest source: no huge intermediate image
        ((2560, 1), (64, 2560)),
        ((1, 1), (64, 2560)),
        ((2560, 2), (2560, 64)),
        ((1000, 999), (640, 640)),
        ((64, 64), (64, 64)),
    ],
)
def test_awkward_sizes(mode, source, frame):
    image = Image.new("RGB", source, COLOUR)
    assert fit(image, *frame, mode).size == frame
    assert mask_for(image.convert("L"), *frame, mode).size == frame


def test_fill_stretches_the_edges_over_the_bands():
    # A tall image with a red left column and a blue right one, into a square: bands take the edge colours.
    image = Image.new("RGB", (32, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 64))
    out = np.asarray(fit(image, 64, 64, "ResizeAndFill"))
    assert (out[:, :16] == (255, 0, 0)).all() and (out[:, -16:] == (0, 0, 255)).all()
    cropped = np.asarray(fit(image, 64, 32, "CropAndResize"))  # the centre rows, full width
    assert (cropped[:, :20] == (255, 0, 0)).all() and (cropped[:, -20:] == (0, 0, 255)).all()  # off the seam


def test_an_alpha_mask_uses_its_alpha():
    mask = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 20, 40))
    grey = np.asarray(mask_for(mask, 64, 64, "JustResize"))
    assert grey[:, :20].min() == 255 and grey[:, -20:].max() == 0  # away from the edge's ringing


def test_unknown_mode_and_empty_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown resize mode"):
        placement(10, 10, 64, 64, "Stretch")
    with pytest.raises(ValueError, match="empty size"):
        reference_images.placement(0, 10, 64, 64, "JustResize")


# --- decode: hostile inputs are refused by name, good ones come back in a mode the engine uses ------------
def _entry(name: str) -> str:
    return dict(fuzzing.hostile_images())[name]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gif", "GIF images are not accepted (use PNG, JPEG or WebP)"),
        ("bmp", "BMP images are not accepted (use PNG, JPEG or WebP)"),
        ("tiff", "TIFF images are not accepted (use PNG, JPEG or WebP)"),
        ("gif as data URI", "GIF images are not accepted"),  # the data decides, not the data URI's type
        ("text", "not a readable PNG, JPEG or WebP image"),
        ("zeros", "not a readable PNG, JPEG or WebP image"),
        ("10 MB of base64 zeros", "not a readable PNG, JPEG or WebP image"),
        ("empty", "expected a base64 image (PNG, JPEG or WebP)"),
        ("empty data URI", "the image is empty (no bytes)"),
        ("animated png", "animated images are not accepted (send a single frame)"),
        ("animated webp", "animated images are not accepted (send a single frame)"),
        ("truncated png", "not a readable PNG image (damaged or truncated)"),
        ("png bad crc", "not a readable PNG image (damaged or truncated)"),
        ("zero-size png", "not a readable PNG image (damaged or truncated)"),
        ("bomb header 100000²", "image too large (at most 26214400 pixels)"),
        ("bomb 6000² grey", "6000x6000 is too large (at most 26214400 pixels)"),
        ("jpeg claiming 60000²", "image too large (at most 26214400 pixels)"),  # Pillow's own bomb check
        ("not base64", "not valid base64"),
        ("base64 without padding", "not valid base64"),
        ("base64 with newlines", "not valid base64"),
        ("non-ASCII base64", "not valid base64"),
        ("data URI without base64", "a data URI must carry base64, as in data:image/png;base64,…"),
        ("data URI without comma", "a data URI must carry base64"),
    ],
)
def test_hostile_images_are_refused_naming_the_entry(name, message):
    with pytest.raises(errors.ParamError) as info:
        reference_images.decode(_entry(name), "ImageAndMaskList[0]")
    assert info.value.message.startswith(f"ImageAndMaskList[0]: {message}")


def test_a_bomb_is_refused_before_its_pixels_are_decoded():
    started = time.monotonic()
    for name in ("bomb header 100000²", "bomb 6000² grey", "jpeg claiming 60000²"):
        with pytest.raises(errors.ParamError, match="too large"):
            reference_images.decode(_entry(name), "image")
    assert time.monotonic() - started < 1  # decoding 36 MP alone would take longer


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("png", "RGB"),
        ("jpeg", "RGB"),
        ("webp", "RGB"),
        ("png as data URI", "RGB"),
        ("mask", "L"),
        ("la png", "LA"),
        ("cmyk jpeg", "RGB"),
        ("16-bit png", "L"),
        ("palette png", "RGBA"),  # its transparency is kept
        ("1-bit png", "L"),
    ],
)
def test_accepted_images_come_back_in_a_mode_the_engine_uses(name, mode):
    image = reference_images.decode(_entry(name), "image")
    assert image.mode == mode and image.size == (8, 8)
    assert fit(image, 64, 64, "JustResize").size == (64, 64)
    assert mask_for(image, 64, 64, "JustResize").size == (64, 64)


def test_16_bit_grey_is_scaled_not_clipped():
    image = reference_images.decode(_entry("16-bit png"), "image")
    assert image.getpixel((0, 0)) == 40000 // 256 and image.getpixel((1, 0)) == 0

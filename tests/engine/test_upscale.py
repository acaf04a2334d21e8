"""ResizeImage's engine side (engine/upscale.py) on tiny random upscalers of real architectures.

The files are written as users download them (tests/engine/upscale_files.py: a Real-ESRGAN Compact
`.pth` and an ESRGAN RRDB `.safetensors`, and the other way round), so spandrel's detection is what runs.
Inputs are 40×36 (80×72 and 160×144 where tiles need room), so the whole file takes a few seconds on a CPU.

Tiled against untiled: tiles share their overlap and blend with complementary ramps that give no weight
to the outer quarter of each overlap (the pixels that saw the tile's zero padding instead of the
neighbour's content). What is left differs from the untiled result only where a pixel's receptive field
still reaches past the tile's edge, which these models' weights make small: 1/255 at most is what
uint8 rounding alone gives (two floats a hair apart round to neighbouring values), and the bound is
2/255 everywhere, in a band around every tile border too, with a mean under 0.05/255.
"""

from __future__ import annotations

import base64
import io
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picserve import domain, errors
from picserve.catalog import Catalog
from picserve.engine import png, upscale
from picserve.engine.engine import Engine
from tests.engine.upscale_files import write_compact, write_esrgan

CPU = torch.device("cpu")
#: the tolerances of tiled against untiled, in 0..255 units (see the module docstring)
MAX_DIFF, MEAN_DIFF = 2.0, 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upscale-models")
    folder = root / "upscale"
    write_compact(folder / "compact.pth")
    write_compact(folder / "compact-st.safetensors", seed=1)
    write_esrgan(folder / "esrgan.safetensors")
    write_esrgan(folder / "esrgan-pth.pth", seed=1)
    write_compact(folder / "compact-x2.pth", scale=2, seed=2)
    (folder / "broken.pth").write_bytes(b"PK\x03\x04 this is no zip archive" * 8)
    from safetensors.torch import save_file

    save_file({"text_model.embeddings.weight": torch.zeros(8, 4)}, str(folder / "not-an-upscaler.safetensors"))
    return root


@pytest.fixture
def engine(models) -> Engine:
    """A fresh engine (its own upscaler cache) over the module's models folder."""
    return Engine(Catalog(models, ttl=0))


def noise(width: int = 40, height: int = 36, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def as_base64(image: Image.Image, parameters: str | None = None) -> str:
    return base64.b64encode(png.to_png(image, parameters)).decode()


def spec_for(
    image: Image.Image,
    width: int,
    height: int,
    code: str | None = "compact",
    parameters: str | None = None,
    model_scale: int = 4,
) -> domain.UpscaleSpec:
    return domain.UpscaleSpec(
        width=width,
        height=height,
        source_width=image.width,
        source_height=image.height,
        model_code=code,
        model_scale=model_scale,
        image=as_base64(image, parameters),
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize(
    ("code", "architecture"),
    [
        ("compact", "RealESRGAN Compact"),
        ("compact-st", "RealESRGAN Compact"),
        ("esrgan", "ESRGAN"),
        ("esrgan-pth", "ESRGAN"),
    ],
)
def test_spandrel_detects_the_tiny_files_both_as_pth_and_safetensors(engine, code, architecture):
    descriptor = engine.upscalers.get(code)
    assert (descriptor.architecture.name, descriptor.scale) == (architecture, 4)
    assert descriptor.dtype == torch.float32 and descriptor.device == CPU  # fp32 on the CPU, whatever it supports
    assert engine.upscalers.loaded() == [code]
    assert engine.holdings()["upscale"] == [code]
    assert engine.upscalers.get(code) is descriptor  # held, not loaded again


@pytest.mark.parametrize(
    ("width", "height", "loads"),
    [
        (160, 144, True),  # exactly ×4
        (150, 100, True),  # not a multiple of anything: ×4, then Lanczos down
        (200, 90, True),  # the aspect ratio changes: stretched
        (64, 30, True),  # larger one way only: still the model, then Lanczos
        (30, 20, False),  # a downscale never loads the model
        (40, 36, False),  # the same size: nothing to upscale
    ],
)
def test_the_output_is_exactly_width_by_height(engine, width, height, loads):
    image = noise()
    generated = upscale.run(engine, spec_for(image, width, height), lambda _f: None, None)
    (result,) = generated.images
    assert result.size == (width, height) and result.mode == "RGB"
    assert engine.upscalers.loaded() == (["compact"] if loads else [])
    assert generated.seeds == [] and len(generated.infotexts) == 1
    upscaler = "compact (RealESRGAN Compact ×4)" if loads else "Lanczos"
    assert generated.infotexts[0] == f"Postprocess upscale to: {width}x{height}, Postprocess upscaler: {upscaler}"
    assert generated.pngs()[0].startswith(b"\x89PNG")


def test_without_a_model_it_is_a_lanczos_resample(engine):
    image = noise()
    (result,) = upscale.run(engine, spec_for(image, 120, 108, code=None), lambda _f: None, None).images
    assert np.array_equal(pixels(result), pixels(image.resize((120, 108), Image.Resampling.LANCZOS)))
    assert engine.upscalers.loaded() == []


def test_the_model_runs_at_its_real_scale_as_many_passes_as_the_target_needs(engine):
    image = noise()
    tiles: list[tuple[int, int]] = []
    descriptor = engine.upscalers.get("compact-x2")
    descriptor.model.register_forward_pre_hook(lambda _m, args: tiles.append(tuple(args[0].shape[-2:])))
    # the spec says ×4 (a catalog without a sidecar guessed it): the loaded model's ×2 is what counts
    spec = spec_for(image, 300, 270, code="compact-x2", model_scale=4)
    (result,) = upscale.run(engine, spec, lambda _f: None, None).images
    assert result.size == (300, 270)
    # 3 passes cover 300×270 from 40×36 at ×2; each later one starts from the least size it needs:
    # 80×72 → 75×68 (→ 150×136 covers 300×270 after one more), 150×136 → 150×135 (→ 300×270)
    assert tiles == [(36, 40), (68, 75), (135, 150)]
    assert domain.upscale_passes((40, 36), (4096, 4096), 2) == domain.UPSCALE_MAX_PASSES  # then Lanczos the rest


@pytest.mark.parametrize(
    ("source", "target", "scale", "plan"),
    [
        ((1024, 1024), (4096, 4096), 4, [(1024, 1024)]),
        ((1024, 1024), (2048, 2048), 4, [(1024, 1024)]),  # the source as it is, Lanczos down after
        ((256, 256), (4096, 4096), 4, [(256, 256), (1024, 1024)]),
        ((1000, 1023), (4096, 4096), 4, [(1000, 1023), (1024, 1024)]),  # not 16000×16368
        ((3000, 500), (2000, 2000), 4, [(2000, 500)]),  # nothing for the model to add past the target
        ((64, 64), (4096, 4096), 2, [(64, 64), (128, 128), (256, 256)]),  # at most 3 passes
        ((100, 100), (150, 150), 1, [(100, 100)]),  # a restorer runs once
    ],
)
def test_each_pass_starts_from_the_least_size_it_needs(source, target, scale, plan):
    assert upscale.plan_passes(source, target, scale) == plan


@pytest.mark.parametrize(("code", "tile"), [("compact", 32), ("compact", 48), ("esrgan", 32), ("esrgan", 48)])
def test_tiled_equals_untiled_within_tolerance_even_at_tile_borders(engine, code, tile):
    descriptor = engine.upscalers.get(code)
    image = noise(80, 72, seed=5)  # 3×3 tiles of 32 (sharing 8), 2×2 of 48 (sharing 12)
    counted: list[tuple[int, int]] = []
    whole = pixels(upscale.upscale_pass(descriptor, image, 0, upscale.OVERLAP, lambda *_a: None, CPU))
    with torch.inference_mode():
        direct = descriptor(torch.from_numpy(pixels(image) / 255).permute(2, 0, 1)[None])
    direct_pixels = (direct[0].permute(1, 2, 0) * 255).round().numpy()
    assert np.array_equal(whole, direct_pixels)  # one piece: the model's own output
    tiled = pixels(upscale.upscale_pass(descriptor, image, tile, upscale.OVERLAP, lambda *a: counted.append(a), CPU))
    assert tiled.shape == whole.shape == (288, 320, 3)
    assert counted[-1][0] == counted[-1][1] == len(counted) > 1  # it was tiled
    diff = np.abs(tiled - whole)
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
    # a band of 8 output pixels either side of every tile edge that meets another tile, checked on its own
    scale = descriptor.scale
    for axis, length in ((0, image.height), (1, image.width)):
        spans = upscale._spans(length, tile, upscale.OVERLAP)
        edges = {start for start, _ in spans[1:]} | {end for _, end in spans[:-1]}
        assert edges, "the tile should have split this axis"
        for edge in edges:
            band = slice(max(0, edge * scale - 8), edge * scale + 8)
            near = diff[band] if axis == 0 else diff[:, band]
            assert near.max() <= MAX_DIFF, (axis, edge, near.max())


def test_progress_rises_per_tile_to_one_and_previews_come_with_each_tile(engine):
    engine.upscalers.tile = 32  # PICSERVE_UPSCALE_TILE: 40×36 is 2×2 tiles, 160×144 is 7×6
    image = noise()
    progress: list[float] = []
    previews: list[Image.Image] = []
    spec = spec_for(image, 640, 576)  # ×16: two passes of the ×4 model
    (result,) = upscale.run(engine, spec, progress.append, lambda make: previews.append(make())).images
    assert result.size == (640, 576)
    assert len(progress) == 4 + 42 and progress == sorted(progress) and progress[-1] == 1.0
    assert progress[3] == pytest.approx(1 / 17)  # weighted by output pixels: the first pass is 1/17 of the work
    assert len(previews) == len(progress)
    assert {p.size for p in previews[:4]} == {(160, 144)} and {p.size for p in previews[4:]} == {(256, 230)}
    # the last preview is the second pass's output (here the result itself), shrunk
    shrunk = pixels(upscale._preview(upscale._to_tensor(result, 3), None, torch.zeros(0)))
    assert np.abs(pixels(previews[-1]) - shrunk).max() <= 1
    # before the pass ends, what is not yet upscaled shows the pass's input
    first = pixels(previews[4])
    assert np.abs(first[200:] - pixels(previews[3].resize((256, 230), Image.Resampling.BILINEAR))[200:]).mean() < 4


def test_a_cancel_between_tiles_stops_the_run(engine):
    engine.upscalers.tile = 24
    ran: list[int] = []
    engine.upscalers.get("compact").model.register_forward_hook(lambda *_a: ran.append(1))
    calls: list[float] = []

    def on_step(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise errors.TaskCanceled()

    with pytest.raises(errors.TaskCanceled):
        upscale.run(engine, spec_for(noise(), 160, 144), on_step, None)
    assert len(ran) == 2 < 4  # two of the four tiles ran, then it stopped


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_and_resized_beside_the_model_output(engine, mode):
    image = noise(mode=mode)
    alpha = Image.linear_gradient("L").resize(image.size)
    image.putalpha(alpha)
    (result,) = upscale.run(engine, spec_for(image, 150, 130), lambda _f: None, None).images
    assert result.mode == "RGBA" and result.size == (150, 130)
    expected = alpha.resize((150, 130), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(result.getchannel("A")), pixels(expected))
    decoded = Image.open(io.BytesIO(upscale.run(engine, spec_for(image, 80, 72), lambda _f: None, None).pngs()[0]))
    assert decoded.mode == "RGBA"


def test_grey_images_go_through_the_model_as_rgb(engine):
    (result,) = upscale.run(engine, spec_for(noise(mode="L"), 160, 144), lambda _f: None, None).images
    assert result.mode == "RGB" and result.size == (160, 144)


def test_a_generated_images_parameters_are_kept_in_the_infotext(engine):
    parameters = "a lighthouse\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, Seed: 3, Model: tiny"
    spec = spec_for(noise(), 160, 144, parameters=parameters)
    generated = upscale.run(engine, spec, lambda _f: None, None)
    field = "Postprocess upscale to: 160x144, Postprocess upscaler: compact (RealESRGAN Compact ×4)"
    assert generated.infotexts == [f"{parameters}, {field}"]
    # chained once more: the earlier upscale's fields give way to the new ones
    again = spec_for(generated.images[0], 200, 180, parameters=generated.infotexts[0], code=None)
    assert upscale.run(engine, again, lambda _f: None, None).infotexts == [
        f"{parameters}, Postprocess upscale to: 200x180, Postprocess upscaler: Lanczos"
    ]
    text = Image.open(io.BytesIO(generated.pngs()[0])).info["parameters"]
    assert text == generated.infotexts[0]


class _RunsOutAbove:
    """A descriptor that raises CUDA's out-of-memory error for tiles with a side above `limit`."""

    def __init__(self, descriptor, limit: int) -> None:
        self._descriptor, self._limit, self.sides = descriptor, limit, []

    def __getattr__(self, name):
        return getattr(self._descriptor, name)

    def __call__(self, piece: torch.Tensor) -> torch.Tensor:
        side = max(piece.shape[-2:])
        self.sides.append(side)
        if side > self._limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {side} MiB")
        return self._descriptor(piece)


def test_out_of_memory_halves_the_tile_and_completes(engine):
    descriptor = engine.upscalers.get("compact")
    image = noise(160, 144, seed=2)
    whole = pixels(upscale.upscale_pass(descriptor, image, 0, upscale.OVERLAP, lambda *_a: None, CPU))
    flaky = _RunsOutAbove(descriptor, limit=80)
    progress: list[tuple[int, int]] = []
    result = upscale.upscale_pass(flaky, image, 256, upscale.OVERLAP, lambda *a: progress.append(a), CPU)
    assert flaky.sides[0] == 160 and max(flaky.sides[1:]) <= 80  # one piece ran out; tiles of 80 did not
    assert progress[-1][0] == progress[-1][1] == 9  # 3×3 tiles of at most 80 px
    diff = np.abs(pixels(result) - whole)
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF


def test_out_of_memory_even_in_the_smallest_tiles_is_an_out_of_memory_error(engine):
    flaky = _RunsOutAbove(engine.upscalers.get("compact"), limit=32)
    with pytest.raises(errors.OutOfMemory, match=r"160x144 .* even in tiles of 64 px"):
        upscale.upscale_pass(flaky, noise(160, 144), 0, upscale.OVERLAP, lambda *_a: None, CPU)
    # one piece, then tiles of at most 80 (3×3 of 67×62), then of 64: each pass stopped at its first tile
    assert flaky.sides == [160, 67, 64]


def test_the_tile_is_planned_from_free_memory_unless_set(engine, monkeypatch):
    descriptor = engine.upscalers.get("compact")
    per_pixel = upscale.activation_bytes_per_pixel(descriptor)
    assert per_pixel == 4 * (16 * 8 + 12 * 16)  # fp32, 8 features; pixel-shuffled: 12 channels at ×4
    esrgan = upscale.activation_bytes_per_pixel(engine.upscalers.get("esrgan"))
    assert esrgan == 4 * (16 * 8 + 3 * 8 * 16)  # upsampled features at ×4
    from picserve.engine import devices

    for free, side in ((2**40, 512), (per_pixel * 256**2 * 2, 256), (per_pixel * 255**2 * 2, 192), (0, 64)):
        monkeypatch.setattr(devices, "free_device_memory", lambda _device, free=free: free)
        assert upscale.plan_tile(descriptor, CPU, 0) == side
    assert upscale.plan_tile(descriptor, CPU, 100) == 100


@pytest.mark.parametrize(
    ("length", "tile", "spans"),
    [
        (1024, 512, [(0, 363), (330, 693), (661, 1024)]),  # 3 tiles of 363, not of 512 sharing 256
        (512, 512, [(0, 512)]),
        (100, 0, [(0, 100)]),
        (40, 24, [(0, 23), (17, 40)]),  # the overlap is a quarter of a small tile
        (1000, 256, [(0, 226), (194, 420), (387, 613), (580, 806), (774, 1000)]),  # 5 tiles either way
    ],
)
def test_tiles_cover_the_image_evenly_with_the_least_side(length, tile, spans):
    assert upscale._spans(length, tile, upscale.OVERLAP) == spans
    assert upscale._spans(1024, 512, 32, multiple=8)[0] == (0, 368)  # SwinIR's windows: a multiple of 8


@pytest.mark.parametrize(
    ("code", "why"),
    [("broken", "unreadable .pth file"), ("not-an-upscaler", "not a model spandrel can load")],
)
def test_a_file_spandrel_cannot_load_is_a_model_load_error_naming_it(engine, models, code, why):
    with pytest.raises(errors.ModelLoadError, match=f"upscaler '?{code}'?[: ].*{why}"):
        upscale.run(engine, spec_for(noise(), 160, 144, code=code), lambda _f: None, None)
    assert engine.upscalers.loaded() == []
    # the catalog flags the garbage file first; spandrel, asked all the same, is refused the same way
    path = next((models / "upscale").glob(f"{code}.*"))
    with pytest.raises(errors.ModelLoadError, match=f"upscaler {code}: {path.name} is not a model spandrel can load"):
        upscale.load_descriptor(code, path, CPU, torch.float32)


def test_loaded_upscalers_are_bounded_and_reloaded_when_their_file_changes(engine, models, tmp_path):
    upscalers = engine.upscalers
    first = upscalers.get("compact")
    upscalers.budget = 1  # below any model: only the most recent stays
    upscalers.get("esrgan")
    assert upscalers.loaded() == ["esrgan"]
    upscalers.budget = upscale.DEFAULT_BUDGET
    assert upscalers.get("compact") is not first  # it was dropped: loaded again
    assert upscalers.loaded() == ["esrgan", "compact"]
    # a new file under the same name (same size; a later mtime): loaded again, with its own weights
    changed = Engine(Catalog(_copy_of(models, tmp_path), ttl=0)).upscalers
    before = changed.get("compact")
    path = tmp_path / "models" / "upscale" / "compact.pth"
    write_compact(path, seed=9)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = changed.get("compact")
    assert after is not before
    assert not torch.equal(next(after.model.parameters()), next(before.model.parameters()))


def _copy_of(models: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "upscale"
    folder.mkdir(parents=True)
    (folder / "compact.pth").write_bytes((models / "upscale" / "compact.pth").read_bytes())
    return tmp_path / "models"


def test_an_engine_without_upscalers_refuses():
    with pytest.raises(errors.GenerationError, match="does no upscaling"):
        upscale.run(types.SimpleNamespace(), spec_for(noise(), 160, 144), lambda _f: None, None)


@pytest.mark.parametrize(
    ("dtype", "half", "bf16", "expected"),
    [
        (torch.float16, True, True, torch.float16),
        (torch.float16, False, True, torch.float32),  # an architecture that overflows in fp16
        (torch.bfloat16, True, True, torch.bfloat16),
        (torch.bfloat16, True, False, torch.float16),
        (torch.float32, True, True, torch.float32),  # the operator chose fp32
    ],
)
def test_half_precision_only_on_cuda_where_the_architecture_supports_it(dtype, half, bf16, expected):
    descriptor = types.SimpleNamespace(supports_half=half, supports_bfloat16=bf16)
    assert upscale.compute_dtype(descriptor, torch.device("cuda"), dtype) == expected
    assert upscale.compute_dtype(descriptor, CPU, dtype) == torch.float32

"""admission.py: memory amounts, budgets, the estimate of a model's weights and the plan of a generation."""

import json
import struct

import pytest

from picserve import admission

GIB = 2**30
CPU, CUDA = admission.profile_for("cpu"), admission.profile_for("cuda:1")


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("12GiB", None, 12 * GIB),
        ("12 gib", None, 12 * GIB),
        ("8000MB", None, 8000 * 10**6),
        ("24g", None, 24 * GIB),
        ("1048576", None, 2**20),
        ("0.6", 10 * GIB, 6 * GIB),
        ("60%", 10 * GIB, 6 * GIB),
        ("1", 10 * GIB, 1),  # a whole number is bytes, not the whole device
    ],
)
def test_amounts_of_memory(text, total, expected):
    assert admission.parse_amount(text, total) == expected


@pytest.mark.parametrize(
    ("text", "total", "says"),
    [
        ("lots", 10, "not an amount of memory"),
        ("12 parsecs", 10, "not an amount of memory"),
        ("-1GiB", 10, "not an amount of memory"),
        ("150%", 10, "in (0, 1]"),
        ("0.5", None, "device's memory is unknown"),
    ],
)
def test_bad_amounts_say_what_is_accepted(text, total, says):
    with pytest.raises(ValueError, match=r".*") as info:
        admission.parse_amount(text, total)
    assert says in str(info.value)


def test_budgets_by_device():
    ram, gpu = 128 * GIB, 80 * GIB
    assert admission.budgets("auto", "auto", "cuda", gpu, ram, 4) == (int(gpu * 0.6), ram // 8)
    assert admission.budgets("auto", "auto", "cpu", ram, ram, 0) == (ram // 2, 0)
    assert admission.budgets("none", "0", "cuda", gpu, ram, 1) == (None, 0)
    assert admission.budgets("20GiB", "25%", "cuda", gpu, ram, 1) == (20 * GIB, ram // 4)
    with pytest.raises(ValueError, match="PICSERVE_MODEL_MEMORY: 'x'"):
        admission.budgets("x", "auto", "cuda", gpu, ram, 1)
    with pytest.raises(ValueError, match="PICSERVE_MODEL_HOST_MEMORY"):
        admission.budgets("auto", "lots", "cuda", gpu, ram, 1)


def test_the_gpu_runs_half_the_cpus_unet_bytes_and_the_same_fp32_vae():
    assert CUDA.unet_per_pixel * 2 == CPU.unet_per_pixel and CUDA.vae_per_pixel == CPU.vae_per_pixel
    assert (CPU.weight_bytes, CUDA.weight_bytes) == (4, 2)
    assert admission.profile_for("mps") is CUDA


def test_plenty_of_memory_keeps_the_whole_chunk_and_an_untiled_decode():
    plan = admission.plan(1024, 1024, 4, 4, 80 * GIB, CUDA)
    assert (plan.chunk, plan.slice_vae, plan.tiled_vae, plan.fits) == (4, False, False, True)


def test_less_memory_slices_the_decode_then_tiles_it_then_splits_the_batch():
    full = admission.plan(1024, 1024, 4, 4, None, CUDA)
    sliced = admission.plan(1024, 1024, 4, 4, full.peak - 1, CUDA)
    assert (sliced.chunk, sliced.slice_vae, sliced.tiled_vae) == (4, True, False)
    tight = admission.plan(1024, 1024, 4, 4, sliced.peak - 1, CUDA)
    assert tight.chunk < 4 or tight.tiled_vae
    smallest = admission.plan(1024, 1024, 4, 4, 0, CUDA)
    assert (smallest.chunk, smallest.fits) == (1, False)
    # every plan that was chosen fits, and a looser budget never gives a smaller chunk
    chunks = [admission.plan(1024, 1024, 4, 4, int(m * GIB), CUDA) for m in (1, 2, 3, 4, 6, 8, 12, 24)]
    assert all(p.peak <= int(m * GIB) for p, m in zip(chunks, (1, 2, 3, 4, 6, 8, 12, 24), strict=True) if p.fits)
    assert [p.chunk for p in chunks] == sorted(p.chunk for p in chunks)


def test_large_images_always_decode_tiled_except_seamless_ones():
    assert admission.plan(2048, 2048, 1, 4, None, CUDA).tiled_vae
    assert not admission.plan(2048, 2048, 1, 4, None, CUDA, seamless=True).tiled_vae
    assert not admission.plan(2048, 2048, 2, 4, 1, CUDA, seamless=True).tiled_vae  # even when it does not fit


def test_the_least_memory_grows_with_the_size_and_the_model():
    sizes = [admission.minimum(s, s, 7 * GIB, CUDA) for s in (512, 1024, 2048, 2560, 4096)]
    assert sizes == sorted(sizes) and sizes[0] > 7 * GIB
    assert admission.minimum(1024, 1024, 0, CUDA) < admission.minimum(1024, 1024, 7 * GIB, CUDA)
    # SDXL fp16 at 1024² fits a 12 GiB card (as A1111 users know, with the VAE in fp32), not an 8 GiB one
    assert 8 * GIB < admission.minimum(1024, 1024, 7 * GIB, CUDA) < 12 * GIB


def _safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = {"F16": 2, "F32": 4}[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_a_models_bytes_come_from_its_tensor_shapes_in_the_compute_dtype(tmp_path):
    single = tmp_path / "m.safetensors"
    _safetensors(single, {"a": ("F16", [10, 10]), "b": ("F32", [5])})
    assert admission.model_bytes(single, 2) == 210 and admission.model_bytes(single, 4) == 420
    folder = tmp_path / "folder"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        (folder / part).mkdir(parents=True)
        _safetensors(folder / part / "diffusion_pytorch_model.safetensors", {"w": ("F32", [3])})
        _safetensors(folder / part / "diffusion_pytorch_model.fp16.safetensors", {"w": ("F16", [3])})  # a variant
    assert admission.model_bytes(folder, 2) == 4 * 3 * 2
    assert admission.model_bytes(tmp_path / "missing.safetensors", 2) == 0
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert admission.model_bytes(tmp_path / "bad.safetensors", 2) == 0


def test_bytes_are_shown_as_people_read_them():
    assert admission.shown(6.9 * GIB) == "6.9 GiB" and admission.shown(512 * 2**20) == "512 MiB"

"""ResizeImage and RemoveBackground(+InBatch) as tasks, end to end in one process: the signed API, the
real worker loop, the real engine on tiny random models of the real architectures (a Real-ESRGAN
Compact `.pth` through spandrel, an ONNX segmenter through rembg), the store. A generation's result is
upscaled and cut out by TaskUID, and gives the same images as the same requests with its bytes uploaded.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from picserve.catalog import Catalog
from picserve.config import Settings
from picserve.engine import tiny
from picserve.engine.engine import Engine
from tests.api.conftest import open_stack
from tests.engine.onnx_files import write_tiny_segmenter
from tests.engine.upscale_files import write_compact


@pytest.fixture
def tool_models(tmp_path, models_dir):
    root = tmp_path / "models"
    root.mkdir()
    (root / "main").symlink_to(models_dir / "main")  # the tiny SDXL, built once per cache
    write_compact(root / "upscale" / "4x-compact.pth")
    write_tiny_segmenter(root / "background" / "u2net-tiny.onnx")
    return root


@pytest.fixture
def stack(tmp_path, tool_models):
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=tool_models,
        progress_interval=0.0,
        device="cpu",
        upscale_tile=24,  # several tiles on small images: the tiled path
    )
    with open_stack(settings) as opened:
        opened.engine = Engine(Catalog(tool_models, ttl=0), device="cpu", upscale_tile=24)  # type: ignore[attr-defined]
        yield opened


def run(stack) -> None:
    stack.run_worker(stack.engine)


def finished_images(stack, client, uid: str) -> list[Image.Image]:
    [detail] = client.list_tasks_details([uid])
    assert detail["Status"] == "Finished", detail
    [task] = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)
    return [Image.open(io.BytesIO(stack.store.get(key))) for key in task.result_keys]


def result_bytes(stack, client, uid: str, index: int = 0) -> bytes:
    [task] = stack.api.portal.call(stack.repo.get_many, [uid], client.public_key)
    return stack.store.get(task.result_keys[index])


def generate(client, batch: int = 1) -> str:
    return client.generate_images_sdxl(
        MainModel={"ModelCode": tiny.TINY_CODE, "InferenceParams": {"Steps": 6}},
        PositivePrompts=["a lighthouse"],
        Width=96,
        Height=64,
        BatchSize=batch,
        Seed=5,
        TranslatePrompts=False,
    )


def test_a_generation_upscaled_by_task_uid_equals_the_same_upscale_of_its_bytes(stack):
    client = stack.client()
    generated = generate(client)
    run(stack)
    source = result_bytes(stack, client, generated)

    chained = client.call("ResizeImage", Image=f"task:{generated}/0", Width=200, Height=150)["TaskUID"]
    uploaded = client.call("ResizeImage", Image=base64.b64encode(source).decode(), Width=200, Height=150)["TaskUID"]
    run(stack)
    [by_reference], [by_bytes] = finished_images(stack, client, chained), finished_images(stack, client, uploaded)
    assert by_reference.size == (200, 150) == by_bytes.size  # exactly Width×Height (4× then Lanczos)
    assert np.array_equal(np.asarray(by_reference), np.asarray(by_bytes))
    # the generation's parameters travel with it, and the upscale is said
    assert "Seed: 5" in by_reference.text["parameters"] and "4x-compact" in by_reference.text["parameters"]
    [detail] = client.list_tasks_details([chained])
    assert detail["ConsumeApiPoint"] == 1 and detail["Action"] == "ResizeImage" and detail["Progress"] == 1.0


def test_scale_makes_the_input_times_the_factor(stack):
    client = stack.client()
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), "orange").save(buffer, format="JPEG")
    uid = client.call("ResizeImage", Image=base64.b64encode(buffer.getvalue()).decode(), Scale=2)["TaskUID"]
    run(stack)
    [image] = finished_images(stack, client, uid)
    assert image.size == (100, 80)


def test_a_batch_cut_out_by_task_uid_keeps_order_and_its_masks_are_its_alphas(stack):
    client = stack.client()
    generated = generate(client, batch=2)
    run(stack)
    dark = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 10, 10)).save(dark, format="PNG")
    inputs = [f"task:{generated}/1", base64.b64encode(dark.getvalue()).decode(), f"task:{generated}/0"]
    cut = client.call("RemoveBackgroundsInBatch", RawImages=inputs, HairOptimization="off")["TaskUID"]
    masks = client.call("RemoveBackgroundsInBatch", RawImages=inputs, HairOptimization="off", OnlyMask=True)
    run(stack)
    cutouts, mask_images = finished_images(stack, client, cut), finished_images(stack, client, masks["TaskUID"])
    assert [im.size for im in cutouts] == [(96, 64), (30, 20), (96, 64)]  # one per input, in order
    assert [im.mode for im in cutouts] == ["RGBA"] * 3 and [im.mode for im in mask_images] == ["L"] * 3
    for cutout, mask in zip(cutouts, mask_images, strict=True):
        assert np.array_equal(np.asarray(cutout.getchannel("A")), np.asarray(mask))
    assert np.asarray(cutouts[1].getchannel("A")).max() < 128  # a dark image is background
    source = Image.open(io.BytesIO(result_bytes(stack, client, generated, 1))).convert("RGB")
    opaque = np.asarray(cutouts[0].getchannel("A")) == 255
    assert np.array_equal(np.asarray(cutouts[0].convert("RGB"))[opaque], np.asarray(source)[opaque])


def test_list_models_lists_the_loaded_kinds_and_a_worker_reports_holding_them(stack):
    client = stack.client()
    models = client.list_models()
    assert models["UpscaleModels"]["4x-compact"]["Scale"] == 4 and models["UpscaleModels"]["4x-compact"]["IsDefault"]
    assert models["BackgroundModels"]["u2net-tiny"]["Session"] == "u2net"
    buffer = io.BytesIO()
    Image.new("RGBA", (20, 20), (250, 250, 250, 255)).save(buffer, format="PNG")
    client.call("RemoveBackground", RawImage=base64.b64encode(buffer.getvalue()).decode())
    client.call("ResizeImage", Image=base64.b64encode(buffer.getvalue()).decode(), Width=80, Height=80)
    run(stack)
    held = stack.engine.holdings()
    assert held["upscale"] == ["4x-compact"] and held["background"] == ["u2net-tiny"]


def test_models_add_files_upscalers_and_onnx_models_by_what_they_are(tmp_path):
    from typer.testing import CliRunner

    from picserve import cli

    downloads = tmp_path / "downloads"
    models = tmp_path / "models"
    runner = CliRunner()

    def add(path):
        return runner.invoke(cli.app, ["models", "add", str(path), "--models-dir", str(models)])

    upscaler = add(write_compact(downloads / "RealESRGAN_tiny.safetensors", scale=2))
    assert upscaler.exit_code == 0, upscaler.output
    sidecar = json.loads((models / "upscale" / "RealESRGAN_tiny.json").read_text())
    assert sidecar["Architecture"] == "RealESRGAN Compact" and sidecar["Scale"] == 2

    segmenter = add(write_tiny_segmenter(downloads / "isnet-tiny.onnx"))
    assert segmenter.exit_code == 0, segmenter.output
    assert json.loads((models / "background" / "isnet-tiny.json").read_text())["Session"] == "isnet-general-use"

    one_x = add(write_compact(downloads / "1x-denoise.pth", scale=1))
    assert one_x.exit_code != 0 and "ResizeImage takes upscalers of scale 2 or more" in one_x.output
    garbage = downloads / "broken.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    refused = add(garbage)
    assert refused.exit_code != 0 and "onnxruntime cannot load it" in refused.output
    info = runner.invoke(cli.app, ["models", "info", str(models / "upscale" / "RealESRGAN_tiny.safetensors")])
    assert "architecture  RealESRGAN Compact" in info.output and "scale         2" in info.output
    assert sorted(p.name for p in models.rglob("*") if p.is_file()) == [
        "RealESRGAN_tiny.json",
        "RealESRGAN_tiny.safetensors",
        "isnet-tiny.json",
        "isnet-tiny.onnx",
    ]

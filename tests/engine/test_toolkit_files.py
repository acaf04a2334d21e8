"""`picserve models add` and `models info` for the toolkit's models, loaded as a worker loads them: a face
restorer (spandrel) and a face detector (OpenCV's YuNet format) are files filed in models/faces and
models/facedetect; a Segment Anything folder, a captioner folder and a tagger folder are copied whole
into models/segment and models/caption; what none of them takes is refused with the reason."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from picserve import cli
from tests.engine.caption_files import write_tiny_blip, write_tiny_tagger
from tests.engine.face_files import write_tiny_restoreformer, write_tiny_yunet
from tests.engine.onnx_files import write_tiny_segmenter
from tests.engine.sam_files import write_tiny_sam

runner = CliRunner()


def test_models_add_files_the_toolkits_models_by_what_they_are(tmp_path):
    downloads, models = tmp_path / "downloads", tmp_path / "models"

    def add(path, *more: str):
        return runner.invoke(cli.app, ["models", "add", str(path), *more, "--models-dir", str(models)])

    restorer = add(write_tiny_restoreformer(downloads / "RestoreFormer-tiny.pth"))
    assert restorer.exit_code == 0, restorer.output
    assert json.loads((models / "faces" / "RestoreFormer-tiny.json").read_text())["Architecture"] == "RestoreFormer"
    detector = add(write_tiny_yunet(downloads / "face_detection_yunet.onnx"))
    assert detector.exit_code == 0, detector.output
    assert (models / "facedetect" / "face_detection_yunet.onnx").is_file()
    background = add(write_tiny_segmenter(downloads / "u2net-tiny.onnx"))  # an ONNX model that is no YuNet
    assert background.exit_code == 0 and (models / "background" / "u2net-tiny.onnx").is_file(), background.output

    sam = add(write_tiny_sam(downloads / "slimsam-tiny"))
    assert sam.exit_code == 0, sam.output
    assert "segment slimsam-tiny: a folder of" in sam.output
    assert (models / "segment" / "slimsam-tiny" / "config.json").is_file()
    assert json.loads((models / "segment" / "slimsam-tiny.json").read_text())["Source"].endswith("slimsam-tiny")
    blip = add(write_tiny_blip(downloads / "blip"), "--name", "blip-base")
    assert blip.exit_code == 0 and (models / "caption" / "blip-base" / "config.json").is_file(), blip.output
    tagger = add(write_tiny_tagger(downloads / "wd-vit-tagger-v3"))
    assert tagger.exit_code == 0 and (models / "caption" / "wd-vit-tagger-v3" / "model.onnx").is_file()

    again = add(downloads / "slimsam-tiny")
    assert again.exit_code == 1 and "exists: pass --force" in again.output
    assert add(downloads / "slimsam-tiny", "--force").exit_code == 0
    wrong = add(downloads / "blip", "--kind", "segment", "--name", "x")
    assert wrong.exit_code == 1 and "--kind segment, but the folder is a caption model" in wrong.output
    (downloads / "empty").mkdir()
    empty = add(downloads / "empty")
    assert empty.exit_code == 1 and "neither a point segmenter" in empty.output
    assert not (models / "segment" / "x").exists() and not list((models / ".downloads").glob("*"))

    info = runner.invoke(cli.app, ["models", "info", str(models / "segment" / "slimsam-tiny")])
    assert info.exit_code == 0 and "kind          segment" in info.output, info.output
    info = runner.invoke(cli.app, ["models", "info", str(models / "faces" / "RestoreFormer-tiny.pth")])
    assert "kind          faces" in info.output and "architecture  RestoreFormer" in info.output

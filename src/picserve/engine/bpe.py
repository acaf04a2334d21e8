"""A tiny CLIP-layout BPE vocabulary trainer, so the test model needs no tokenizer download.

The files it writes (`vocab.json`, `merges.txt`) have the layout of OpenAI CLIP's: 256 byte symbols,
the same 256 with `</w>`, one entry per merge, then `<|startoftext|>` and `<|endoftext|>`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

__all__ = ["bytes_to_unicode", "train", "write_tokenizer_files"]

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    # Printable bytes first, in order, then the rest mapped above 255: vocabulary ids depend on it.
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merge(seq: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(seq):
        if i < len(seq) - 1 and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


def train(corpus: str, merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    b2u = bytes_to_unicode()
    seqs: Counter[tuple[str, ...]] = Counter()
    for word, count in Counter(_WORD.findall(corpus.lower())).items():
        symbols = [b2u[b] for b in word.encode("utf-8")]
        seqs[(*tuple(symbols[:-1]), symbols[-1] + "</w>")] += count
    learned: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for seq, count in seqs.items():
            for pair in itertools.pairwise(seq):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        learned.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for seq, count in seqs.items():
            merged[_merge(seq, best)] += count
        seqs = merged
    return learned


def write_tokenizer_files(folder: Path, merges: list[tuple[str, str]]) -> int:
    """Write `vocab.json` + `merges.txt` in CLIP's layout; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids: dict[str, int] = {}
    for token in vocab:
        ids.setdefault(token, len(ids))
    (folder / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(ids)

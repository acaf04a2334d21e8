"""A1111 prompt semantics for SDXL: attention syntax, 75-token chunks (no truncation), clip skip.

compel would do the chunking, but its SDXL wrapper always takes the penultimate layer (no clip skip)
and reads compel syntax, not A1111's. This follows A1111's `prompt_parser.parse_prompt_attention`
and `sd_hijack_clip`: `(word)` ×1.1, `[word]` ÷1.1, `(word:1.3)`, `\\(` for a literal parenthesis,
`BREAK` to start a new chunk; each chunk is encoded by both text encoders, scaled by its weights
with the mean restored, and the chunks are concatenated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Conditioning", "encode", "parse_attention"]

_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_CHUNK = 75  # tokens per chunk, between BOS and EOS
_BREAK_WEIGHT = -1.0  # the weight parse_attention gives a BREAK marker


def parse_attention(text: str) -> list[tuple[str, float]]:
    """`a (cat:1.2) [dog]` → [('a ', 1.0), ('cat', 1.2), (' ', 1.0), ('dog', 0.909…)]; BREAK → ('BREAK', -1)."""
    pieces: list[str] = []
    weights: list[float] = []  # weights[i] is pieces[i]'s
    round_open: list[int] = []  # where each unclosed "(" started, as an index into pieces
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        # BREAK markers are scaled too, as A1111 does (a BREAK inside brackets is then plain text)
        for i in range(start, len(weights)):
            weights[i] *= factor

    def add(piece: str, weight: float) -> None:
        pieces.append(piece)
        weights.append(weight)

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            add(token[1:], 1.0)
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    add("BREAK", _BREAK_WEIGHT)
                add(piece, 1.0)
    for start in round_open:  # unclosed brackets still count, as in A1111
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)

    merged: list[tuple[str, float]] = []  # neighbours of equal weight joined
    for piece, weight in zip(pieces, weights, strict=True):
        if not piece:
            continue
        if merged and merged[-1][1] == weight and weight != _BREAK_WEIGHT:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


@dataclass
class Conditioning:
    embeds: torch.Tensor
    pooled: torch.Tensor
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor


def _chunks(pipe: Any, tokenizer: Any, text: str) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights per chunk of at most 75 tokens."""
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_attention(text):
        if weight == _BREAK_WEIGHT:
            chunks.append((ids, weights))
            ids, weights = [], []
            continue
        if hasattr(pipe, "maybe_convert_prompt"):  # multi-vector textual inversions expand here
            piece = pipe.maybe_convert_prompt(piece, tokenizer)
        for token in tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if len(ids) == _CHUNK:
                chunks.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    chunks.append((ids, weights))
    return chunks


def _encode_side(
    pipe: Any, text: str, clip_skip: int, chunk_count: int, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per chunk, both encoders' hidden states (weighted) concatenated; plus the first chunk's pooled output.

    Both sides of the guidance get `chunk_count` chunks (empty ones pad the shorter), so their embeddings align.
    """
    per_encoder: list[list[torch.Tensor]] = []
    pooled: torch.Tensor | None = None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        chunks = _chunks(pipe, tokenizer, text)
        chunks += [([], [])] * (chunk_count - len(chunks))
        encoded: list[torch.Tensor] = []
        for ids, weights in chunks:
            pad = tokenizer.pad_token_id
            full = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
            full += [pad] * (_CHUNK + 2 - len(full))
            scale = torch.tensor([1.0] + weights + [1.0] * (_CHUNK + 1 - len(weights)), device=device)
            output = encoder(torch.tensor([full], device=device), output_hidden_states=True)
            # diffusers' clip_skip: hidden_states[-(clip_skip + 2)]; A1111's ClipSkip 1 = the penultimate layer.
            hidden = output.hidden_states[-(clip_skip + 1)]
            if pooled is None and encoder is pipe.text_encoder_2 and not encoded:
                pooled = output[0]
            weighted = hidden * scale[None, :, None].to(hidden.dtype)
            # A1111 "original" emphasis: restore the chunk's mean after weighting.
            if weighted.mean() != 0:
                weighted = weighted * (hidden.mean() / weighted.mean())
            encoded.append(weighted)
        per_encoder.append(encoded)
    assert pooled is not None  # every side has at least one chunk
    return [torch.cat(pair, dim=-1) for pair in zip(*per_encoder, strict=True)], pooled


def encode(pipe: Any, prompt: str, negative_prompt: str, clip_skip: int, guidance: bool) -> Conditioning:
    """Prompt embeddings for StableDiffusionXL pipelines, with A1111 weighting and no truncation."""
    device = pipe.text_encoder_2.device

    def chunk_count(text: str) -> int:
        return max(len(_chunks(pipe, tokenizer, text)) for tokenizer in (pipe.tokenizer, pipe.tokenizer_2))

    chunks_per_side = max(chunk_count(prompt), chunk_count(negative_prompt)) if guidance else chunk_count(prompt)
    positive, pooled = _encode_side(pipe, prompt, clip_skip, chunks_per_side, device)
    embeds = torch.cat(positive, dim=1)
    if not guidance or (not negative_prompt and pipe.config.force_zeros_for_empty_prompt):
        # SDXL's own rule: an empty negative prompt conditions on zeros, not on encoded "". Without
        # guidance the pipeline never reads the negative side (and it may have more chunks than the prompt).
        negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        negative, negative_pooled = _encode_side(pipe, negative_prompt, clip_skip, chunks_per_side, device)
        negative_embeds = torch.cat(negative, dim=1)
    dtype = pipe.unet.dtype
    return Conditioning(embeds.to(dtype), pooled.to(dtype), negative_embeds.to(dtype), negative_pooled.to(dtype))

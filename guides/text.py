"""Character-offset bookkeeping shared by the backends.

Tokenizers report token spans in different conventions (trimmed leading spaces, several byte tokens
sharing one character, echoed special tokens). These helpers turn any of them into the one convention of
:class:`~rl_statetune_guides.base.ScoredText`: a contiguous partition of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ScoredText
from .errors import GuideOutputError

__all__ = ["partition_offsets", "tokenize_continuation", "align_pieces", "scored_text", "PieceDecoder"]

# How far ahead align_pieces looks for the next token after an undecodable run (characters).
_ALIGN_WINDOW = 16


def partition_offsets(raw: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Repair tokenizer offsets into a contiguous partition of ``[0, length)``.

    A gap before a token (trimmed whitespace) joins that token; an overlap (byte tokens of one
    character) leaves the later token an empty span; trailing uncovered characters join the last token.
    """
    if not raw:
        if length:
            raise ValueError(f"no token offsets for a text of {length} characters")
        return []
    spans: list[tuple[int, int]] = []
    cursor = 0
    for start, end in raw:
        if start < 0 or end < start:
            raise ValueError(f"invalid token offset ({start}, {end})")
        end = min(max(end, cursor), length)
        spans.append((cursor, end))
        cursor = end
    if cursor < length:
        spans[-1] = (spans[-1][0], length)
    return spans


def tokenize_continuation(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` on its own (no special tokens) and their partitioned character spans.

    The continuation is tokenized separately from the prompt, which is how a guide would have produced
    it token by token after the prompt, and keeps every token inside the continuation.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; scoring needs offset mappings "
            "(load the guide's tokenizer with use_fast=True / a tokenizer.json)"
        )
    if not text:
        return [], []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return ids, partition_offsets([tuple(o) for o in enc["offset_mapping"]], len(text))


def align_pieces(text: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of decoded token strings ``pieces`` inside ``text``.

    Pieces that match ``text`` at the cursor take their own length. A run of pieces that does not match
    (a leading BOS such as ``<s>``, byte tokens decoded to ``\\ufffd``) is resolved by the next matching
    piece within a short window: the run's first token takes the skipped characters, the others are empty.
    A run of empty pieces directly followed by the piece that holds the characters (vLLM reports the byte tokens
    of a character as ``""`` and the character on the token that completes it) gives that piece's characters to
    the run's first token instead: the :class:`ScoredText` convention (a character belongs to its first token).

    Raises:
        GuideOutputError: the pieces cannot be aligned to the text.
    """
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    pending: list[int] = []  # indices of unmatched pieces waiting for the next match

    def flush(upto: int) -> None:
        for j, idx in enumerate(pending):
            spans[idx] = (cursor, upto) if j == 0 else (upto, upto)
        pending.clear()

    for i, piece in enumerate(pieces):
        spans.append(None)
        if not pending and piece and text.startswith(piece, cursor):
            spans[i] = (cursor, cursor + len(piece))
            cursor += len(piece)
            continue
        if pending and piece:
            found = text.find(piece, cursor, cursor + _ALIGN_WINDOW + len(piece))
            if found == cursor and all(pieces[j] == "" for j in pending):
                pending.append(i)
                flush(cursor + len(piece))
                cursor += len(piece)
                continue
            if found >= 0:
                flush(found)
                cursor = found
                spans[i] = (cursor, cursor + len(piece))
                cursor += len(piece)
                continue
        pending.append(i)
    if pending:
        flush(len(text))
        cursor = len(text)
    if cursor != len(text):
        raise GuideOutputError(
            f"guide token pieces cover {cursor} of {len(text)} characters; cannot align them to the text"
        )
    assert all(s is not None for s in spans)
    return spans  # type: ignore[return-value]


def scored_text(text: str, spans: Sequence[tuple[int, int]], logprobs: Sequence[float],
                top_k: Sequence[Sequence[tuple[str, float]]] | None = None) -> ScoredText:
    """Build a :class:`ScoredText` from a partition of ``text``, one log-probability per span and optionally
    the per-token top-k alternatives."""
    return ScoredText(
        text=text,
        pieces=tuple(text[s:e] for s, e in spans),
        offsets=tuple((int(s), int(e)) for s, e in spans),
        logprobs=tuple(float(lp) for lp in logprobs),
        top_k=None if top_k is None else tuple(tuple((p, min(float(v), 0.0)) for p, v in alts) for alts in top_k),
    )


class PieceDecoder:
    """The text of one token id as it reads appended to earlier text (``None`` for special tokens), cached.

    Decoding a SentencePiece id alone drops its word-start space (``"▁the"`` -> ``"the"``); decoding it after an
    anchor token and removing the anchor's text keeps it. Byte-level BPE (SmolLM2, GPT-2) reads the same either
    way. A token holding part of a multi-byte character decodes to ``"\ufffd"``.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.anchor = list(tokenizer.encode("a", add_special_tokens=False))
        self.base = tokenizer.decode(self.anchor, clean_up_tokenization_spaces=False)
        self.special = set(getattr(tokenizer, "all_special_ids", ()))
        self.cache: dict[int, str | None] = {}

    def __call__(self, token_id: int) -> str | None:
        token_id = int(token_id)
        if token_id not in self.cache:
            if token_id in self.special:
                text = None
            else:
                text = self.tokenizer.decode(self.anchor + [token_id], clean_up_tokenization_spaces=False)
                text = text[len(self.base):] if text.startswith(self.base) else \
                    self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            self.cache[token_id] = text
        return self.cache[token_id]

    def top_k(self, tokens: Sequence[int], pieces: Sequence[str],
              rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> list[tuple[tuple[str, float], ...]]:
        """Per continuation token ``t``, the (text, logprob) of the ids ``rows[t]`` (special ids dropped).

        A token whose predecessor does not read as its own piece (part of a multi-byte character, a repaired
        offset) comes after a prefix that may end inside a character: it gets no alternatives.
        """
        out = []
        for t, (ids, lps) in enumerate(rows):
            if t > 0 and self(tokens[t - 1]) != pieces[t - 1]:
                out.append(())
                continue
            out.append(tuple((text, float(lp)) for i, lp in zip(ids, lps) if (text := self(i)) is not None))
        return out

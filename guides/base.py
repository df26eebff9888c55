"""The guide interface: generate chain-of-thought text and score continuations.

A guide is tokenizer-agnostic towards its consumers: :meth:`Guide.score` returns, per continuation, the
guide's own tokens as text pieces with their character offsets *in the continuation string*, so a learner
with a different tokenizer aligns the two token streams by character position only.
"""

from __future__ import annotations

import abc
import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Guide", "ScoredText"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoredText:
    """A continuation split into guide tokens, each with its log-probability under the guide.

    Invariants (checked on construction): ``offsets`` is a contiguous partition of ``text`` —
    ``offsets[0][0] == 0``, each span starts where the previous ended, the last ends at ``len(text)`` —
    and ``pieces[i] == text[offsets[i][0]:offsets[i][1]]``. A guide token that only completes a
    character already claimed by the previous token (a multi-byte character split over byte tokens)
    has an empty piece; its log-probability is still reported. ``logprobs[i]`` is
    ``log p_guide(token_i | prompt, tokens_<i)`` in nats.

    ``top_k`` (optional, from ``score(..., top_k=k)``): per guide token ``i``, the guide's ``k`` most likely
    tokens at that position as ``(piece, logprob)`` pairs, most likely first; ``piece`` is the token's text as it
    would appear appended to ``text[:offsets[i][0]]``. It lets a consumer read the guide's log-probability of
    other one-token continuations of a prefix without another call. ``None`` when not requested or not available.
    """

    text: str
    pieces: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    logprobs: tuple[float, ...]
    top_k: tuple[tuple[tuple[str, float], ...], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.pieces)
        if len(self.offsets) != n or len(self.logprobs) != n:
            raise ValueError(
                f"ScoredText: {n} pieces, {len(self.offsets)} offsets and {len(self.logprobs)} logprobs; "
                "they must have the same length"
            )
        if n == 0 and self.text:
            raise ValueError("ScoredText: non-empty text with no tokens")
        cursor = 0
        for i, ((start, end), piece) in enumerate(zip(self.offsets, self.pieces)):
            if start != cursor or end < start:
                raise ValueError(
                    f"ScoredText: offsets must partition the text contiguously; token {i} spans "
                    f"({start}, {end}) but the previous token ended at {cursor}"
                )
            if self.text[start:end] != piece:
                raise ValueError(f"ScoredText: piece {i} {piece!r} != text[{start}:{end}] {self.text[start:end]!r}")
            cursor = end
        if cursor != len(self.text):
            raise ValueError(f"ScoredText: offsets end at {cursor}, text has {len(self.text)} characters")
        for i, lp in enumerate(self.logprobs):
            if math.isnan(lp) or lp > 1e-6:
                raise ValueError(f"ScoredText: logprob {i} is {lp}; log-probabilities must be <= 0")
        if self.top_k is not None:
            if len(self.top_k) != n:
                raise ValueError(f"ScoredText: top_k has {len(self.top_k)} entries for {n} pieces")
            for i, alts in enumerate(self.top_k):
                for piece, lp in alts:
                    if not isinstance(piece, str) or not math.isfinite(lp) or lp > 1e-6:
                        raise ValueError(f"ScoredText: top_k entry ({piece!r}, {lp}) of token {i} must be "
                                         "(str, finite logprob <= 0)")

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def total_logprob(self) -> float:
        """Log-probability of the whole continuation (sum over guide tokens)."""
        return float(math.fsum(self.logprobs))

    def token_index_at(self, char_pos: int) -> int:
        """Index of the guide token whose span contains character ``char_pos`` of the continuation."""
        if not 0 <= char_pos < len(self.text):
            raise IndexError(f"character {char_pos} outside the continuation of length {len(self.text)}")
        ends = [end for _, end in self.offsets]
        return bisect.bisect_right(ends, char_pos)


class Guide(abc.ABC):
    """A guide LLM. Implementations are batched: one call handles a whole list of prompts.

    ``prompts`` are the raw task prompts (e.g. a GSM8K question). Backends that talk to a chat model
    render them (chat template, system prompt) identically for :meth:`generate` and :meth:`score`, so a
    generated text scored against its own prompt gets the guide's log-probabilities of having written it.
    """

    #: Whether :meth:`score` returns model log-probabilities (False for the dataset guide).
    supports_scoring: bool = True
    #: Whether ``score(..., top_k=k)`` fills :attr:`ScoredText.top_k`; the others return ``top_k=None``.
    supports_top_k: bool = False

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """One completion per prompt (text only, special tokens removed). ``temperature == 0`` is greedy."""

    @abc.abstractmethod
    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        """Teacher-forced per-token log-probabilities of each continuation given its prompt.

        ``top_k > 0`` also asks for the guide's ``top_k`` most likely tokens at each position
        (:attr:`ScoredText.top_k`); a backend without :attr:`supports_top_k` ignores it (``top_k=None``).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release the model / connections. The guide must not be used afterwards."""

    def __enter__(self) -> Guide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_generate_args(prompts: Sequence[str], max_tokens: int, temperature: float) -> list[str]:
    """Validate :meth:`Guide.generate` arguments shared by every backend; return the prompts as a list."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is {type(p).__name__}, expected str")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    return prompts


def warn_no_top_k(guide: Guide, top_k: int) -> None:
    """Say once per guide that ``top_k`` is ignored (the consumer then falls back to exact queries)."""
    if top_k and not getattr(guide, "_warned_top_k", False):
        guide._warned_top_k = True
        log.warning("%s cannot return top-k log-probabilities; score(top_k=%d) returns top_k=None",
                    type(guide).__name__, top_k)


def check_score_args(prompts: Sequence[str], continuations: Sequence[str],
                     top_k: int = 0) -> tuple[list[str], list[str]]:
    """Validate :meth:`Guide.score` arguments; return them as lists."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if isinstance(prompts, str) or isinstance(continuations, str):
        raise TypeError("prompts and continuations must be lists of strings, not single strings")
    prompts, continuations = list(prompts), list(continuations)
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    for name, items in (("prompt", prompts), ("continuation", continuations)):
        for i, s in enumerate(items):
            if not isinstance(s, str):
                raise TypeError(f"{name} {i} is {type(s).__name__}, expected str")
    return prompts, continuations

"""The guide interface: generate chain-of-thought text and score continuations.

A guide is tokenizer-agnostic towards its consumers: :meth:`Guide.score` returns, per continuation, the
guide's own tokens as text pieces with their character offsets *in the continuation string*, so a learner
with a different tokenizer aligns the two token streams by character position only.
"""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Guide", "ScoredText"]


@dataclass(frozen=True, slots=True)
class ScoredText:
    """A continuation split into guide tokens, each with its log-probability under the guide.

    Invariants (checked on construction): ``offsets`` is a contiguous partition of ``text`` —
    ``offsets[0][0] == 0``, each span starts where the previous ended, the last ends at ``len(text)`` —
    and ``pieces[i] == text[offsets[i][0]:offsets[i][1]]``. A guide token that only completes a
    character already claimed by the previous token (a multi-byte character split over byte tokens)
    has an empty piece; its log-probability is still reported. ``logprobs[i]`` is
    ``log p_guide(token_i | prompt, tokens_<i)`` in nats.
    """

    text: str
    pieces: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    logprobs: tuple[float, ...]

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

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """One completion per prompt (text only, special tokens removed). ``temperature == 0`` is greedy."""

    @abc.abstractmethod
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        """Teacher-forced per-token log-probabilities of each continuation given its prompt."""

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


def check_score_args(prompts: Sequence[str], continuations: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate :meth:`Guide.score` arguments; return them as lists."""
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

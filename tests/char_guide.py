"""Guides for tests: a hand-made one with fixed CoTs and a context-free character-level distribution, and a
guide that fails from its n-th call (a crash mid-run).

``CharGuide.score`` splits a continuation into characters and gives each the log-probability ``char_logprob``,
so the guide log-probability of any text is known in closed form whatever the tokenisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rl_statetune_guides import Guide, ScoredText


def char_logprob(c: str) -> float:
    """A fixed distribution over characters: log q(c) in {-0.5, -1.5, ..., -4.5}."""
    return -0.5 - (ord(c) % 5)


def text_logprob(text: str) -> float:
    return math.fsum(char_logprob(c) for c in text)


class CharGuide(Guide):
    def __init__(self, cots: Mapping[str, str] | None = None, default: str = "1 + 2 = 3. #### 3"):
        self.cots, self.default = dict(cots or {}), default
        self.score_calls: list[tuple[list[str], list[str]]] = []

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        return [self.cots.get(p, self.default) for p in prompts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        self.score_calls.append((list(prompts), list(continuations)))
        return [ScoredText(c, tuple(c), tuple((i, i + 1) for i in range(len(c))),
                           tuple(char_logprob(ch) for ch in c)) for c in continuations]


class CrashingGuide(Guide):
    """``inner``'s answers until its ``after``-th generate call; then it raises (the guide went away)."""

    def __init__(self, inner: Guide, after: int):
        self.inner, self.calls, self.after = inner, 0, after

    def generate(self, prompts, max_tokens=256, temperature=0.0):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("guide went away")
        return self.inner.generate(prompts, max_tokens, temperature)

    def score(self, prompts, continuations, top_k=0):
        return self.inner.score(prompts, continuations, top_k)

"""Where the CoT batches come from: task prompts sent to a guide, in a deterministic order.

Batch ``i`` depends only on (seed, i), so a resumed run, or any number of producers, sees the same prompts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from rl_statetune_guides import Guide

from rl_statetune.data import Example
from rl_statetune.rl.config import CotText, RLConfig
from rl_statetune.rl.cot import CotItem, clean_guide_text, guide_prompt, make_items
from rl_statetune.rl.verifier import Check, make_check
from rl_statetune.run.setup import BatchOrder

# rewards that need the guide's scores of its own CoT (to reward actions that equal the guide's token)
NEEDS_COT_SCORES = ("guide_logprob", "reverse_kl")


@dataclass
class GuideStats:
    seconds: float = 0.0
    tokens: int = 0        # RWKV tokens of the guide's text: comparable across guides with different tokenizers
    batches: int = 0
    kept: int = 0          # CoTs the verifier accepted / rejected (guide.cot.verify)
    dropped: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


class CountingGuide(Guide):
    """Forwards to ``inner``, counting calls, queries (prompts) and scored guide tokens until the next
    :meth:`take`."""

    def __init__(self, inner: Guide):
        self.inner, self.calls, self.queries, self.tokens = inner, 0, 0, 0
        self.supports_scoring = getattr(inner, "supports_scoring", True)
        self.supports_top_k = getattr(inner, "supports_top_k", False)

    def generate(self, prompts, max_tokens: int = 256, temperature: float = 0.0):
        self.calls, self.queries = self.calls + 1, self.queries + len(prompts)
        return self.inner.generate(prompts, max_tokens, temperature)

    def score(self, prompts, continuations, top_k: int = 0):
        self.calls, self.queries = self.calls + 1, self.queries + len(prompts)
        out = self.inner.score(prompts, continuations, top_k)
        self.tokens += sum(len(s) for s in out)
        return out

    def take(self) -> dict[str, int]:
        out = {"guide_calls": self.calls, "guide_queries": self.queries, "guide_tokens": self.tokens}
        self.calls = self.queries = self.tokens = 0
        return out

    def close(self) -> None:
        self.inner.close()


class CotSource:
    """``batch(i)`` asks the guide for the CoTs of the i-th batch of task prompts. ``guide`` None: the items are
    the prompts alone (rewards on the learner's own answers need no CoT). ``verify``: the task's answer check;
    a CoT it rejects is marked ``accepted=False`` (rejection-filtered guidance)."""

    def __init__(self, guide: Guide | None, examples: list[Example], section: CotText, batch_size: int,
                 seed: int, tokenizer, score: bool = False, top_k: int = 0, verify: Check | None = None):
        if not examples:
            raise ValueError("no task examples to ask the guide about")
        self.guide, self.examples, self.section, self.tok, self.score = guide, examples, section, tokenizer, score
        self.top_k, self.verify = top_k, verify
        self.order = BatchOrder(len(examples), min(batch_size, len(examples)), seed)
        self.stats = GuideStats()

    def examples_for(self, i: int) -> list[Example]:
        return [self.examples[j] for j in self.order.indices(i)]

    def batch(self, i: int) -> list[CotItem]:
        """The CoT items of batch ``i``: one batched generate call, and one score call when the reward needs the
        guide's scores of its own text (with its top-k next tokens at each position when ``top_k``)."""
        exs = self.examples_for(i)
        if self.guide is None:
            return make_items(exs, [""] * len(exs), self.section)
        prompts = [guide_prompt(e.prompt, self.section) for e in exs]
        t0 = time.perf_counter()
        texts = [clean_guide_text(t, self.section)
                 for t in self.guide.generate(prompts, self.section.max_tokens, self.section.temperature)]
        scored = self.guide.score(prompts, texts, self.top_k) if self.score else None
        self.stats.seconds += time.perf_counter() - t0
        self.stats.tokens += sum(len(self.tok.encode(t)) for t in texts)
        self.stats.batches += 1
        items = make_items(exs, texts, self.section, scored)
        if self.verify is not None:
            items = [dataclasses.replace(it, accepted=self.verify(it.cot, it.answer)) for it in items]
            kept = sum(it.accepted for it in items)
            self.stats.kept += kept
            self.stats.dropped += len(items) - kept
        return items


def make_source(cfg: RLConfig, guide: Guide | None, examples: list[Example], tokenizer) -> CotSource:
    """The run's CoT source: the guide writes CoTs only when a CoT term or ``reward.guide_in_group`` needs them
    (scored with top-k for the guide-scored CoT terms), filtered by the verifier with ``guide.cot.verify``."""
    r = cfg.reward
    writer = guide if r.cot_term is not None or r.guide_in_group else None
    return CotSource(writer, examples, cfg.guide.cot, cfg.train.batch_size, cfg.train.seed, tokenizer,
                     score=r.cot_term in NEEDS_COT_SCORES, top_k=r.guide_top_k,
                     verify=make_check(cfg.data) if cfg.guide.cot.verify else None)

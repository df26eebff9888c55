"""Guide chains of thought as learner targets: the items that travel from the guide to the learners, and
their tokenised, teacher-forcing batches (prompt + CoT, right padded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rl_statetune_guides import ScoredText
from rl_statetune_guides.prompting import fill_template

from rl_statetune.data import Example
from rl_statetune.rl.align import attribute, char_spans
from rl_statetune.rl.config import CotText
from rl_statetune.rl.verifier import reference_answer


@dataclass(frozen=True)
class CotItem:
    """One task prompt and the guide's CoT for it. ``cot = join + guide_text + suffix`` follows the prompt."""

    prompt: str
    guide_prompt: str
    guide_text: str
    join: str = " "
    suffix: str = "\n"
    answer: str = ""
    scored: ScoredText | None = None    # the guide's scores of its own text (rewards that use guide log-probs)
    accepted: bool = True               # False: the verifier rejected the CoT's answer (guide.cot.verify)

    @property
    def cot(self) -> str:
        return self.join + self.guide_text + self.suffix


def make_items(examples: Sequence[Example], texts: Sequence[str], cfg: CotText,
               scored: Sequence[ScoredText] | None = None) -> list[CotItem]:
    """Pair task examples with the guide's raw outputs (stripped and cut to ``cfg.max_chars``). The item's
    ``answer`` is what the verifier checks against: the example's answer, else its target's ``#### N``."""
    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} examples but {len(texts)} guide outputs")
    return [CotItem(e.prompt, guide_prompt(e.prompt, cfg), t, cfg.join, cfg.suffix,
                    reference_answer(e.answer, e.target), scored[i] if scored is not None else None)
            for i, (e, t) in enumerate(zip(examples, texts))]


def guide_prompt(prompt: str, cfg: CotText) -> str:
    return fill_template(cfg.prompt_template, prompt)


def clean_guide_text(text: str, cfg: CotText) -> str:
    """Strip, cut at the first stop string, then at ``max_chars``."""
    text = text.strip()
    cut = min((text.find(s) for s in cfg.stop if s and s in text), default=len(text))
    return text[:cut][: cfg.max_chars].rstrip()


@dataclass
class CotBatch:
    """Teacher-forcing batch. Position ``(b, t)`` with ``mask[b, t]`` predicts CoT token ``idx[b, t + 1]``."""

    items: list[CotItem]
    idx: torch.Tensor              # [B, T]
    lengths: torch.Tensor          # [B]
    mask: torch.Tensor             # [B, T-1] CoT positions
    spans: list[list[tuple[int, int]]]   # per row: character span in ``item.cot`` of each CoT token
    prompt_lens: list[int]
    guide_lp: torch.Tensor         # [B, T-1] guide log-prob attributed to each CoT target token (0 if unscored)
    guide_scored: torch.Tensor     # [B, T-1] bool: a guide token ended inside that target token

    @property
    def targets(self) -> torch.Tensor:
        """[P] the CoT tokens, in the order of ``mask.nonzero()``."""
        return self.idx[:, 1:][self.mask]

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def positions(self) -> list[tuple[int, int]]:
        """(row, index into the row's CoT tokens) for each masked position, in ``targets`` order."""
        out = []
        for b, t in self.mask.nonzero().tolist():
            out.append((b, t + 1 - self.prompt_lens[b]))
        return out


def collate_cots(items: Sequence[CotItem], tokenizer, max_len: int) -> CotBatch:
    """Tokenise prompt and CoT separately (an exact boundary), align the guide's scores to the CoT tokens."""
    rows, p_lens, spans, lps, hits = [], [], [], [], []
    for it in items:
        p, c = tokenizer.encode(it.prompt), tokenizer.encode(it.cot)
        if not p:
            raise ValueError(f"empty prompt for CoT item {it.guide_prompt[:60]!r}")
        c = c[: max(max_len - len(p), 0)]
        if not c:
            raise ValueError(f"prompt of {len(p)} tokens leaves no room for a CoT within max_len={max_len}")
        sp = char_spans(tokenizer, c)
        lp, hit = attribute(it.scored, sp, shift=len(it.join)) if it.scored is not None else \
            ([0.0] * len(c), [False] * len(c))
        rows.append(p + c)
        p_lens.append(len(p))
        spans.append(sp)
        lps.append(lp)
        hits.append(hit)
    B, T = len(rows), max(map(len, rows))
    idx = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T - 1, dtype=torch.bool)
    guide_lp = torch.zeros(B, T - 1)
    scored = torch.zeros(B, T - 1, dtype=torch.bool)
    for b, ids in enumerate(rows):
        s, n = p_lens[b] - 1, len(ids) - p_lens[b]
        idx[b, : len(ids)] = torch.tensor(ids)
        mask[b, s: s + n] = True
        guide_lp[b, s: s + n] = torch.tensor(lps[b])
        scored[b, s: s + n] = torch.tensor(hits[b])
    return CotBatch(list(items), idx, torch.tensor([len(r) for r in rows]), mask, spans, p_lens, guide_lp, scored)

"""Rewards on the learner's own answers (the rollout terms of ``reward.terms``).

The learner samples ``G`` whole answers per task prompt from its tuned state (``rollout.sample_answers``); row
``n * G + g`` is prompt ``n``'s ``g``-th answer. Two terms judge them:

* ``verifier``: the task's answer check (``rl.verifier``) gives 1 / 0 per answer; GRPO advantages over the
  ``G`` answers of a prompt, the same for every token of the answer;
* ``on_policy``: the guide scores the learner's own text, all ``N * G`` answers in ONE ``guide.score`` call; the
  guide's token log-probabilities are attributed to the RWKV tokens of the answer by character offsets
  (``align.attribute``), and token ``t`` gets ``r_t = log p_guide(a_t) - log p_learner(a_t)`` (reverse KL,
  on-policy distillation as in GKD: no discount, no baseline; ``E[r_t] = -KL(pi || p_guide)`` at that context).

The per-token advantage is the weighted sum of the terms'; the loss is ``-sum_t A_t log pi(a_t) / #tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rl_statetune_guides import Guide

from rl_statetune.rl.align import TextQuery, attribute
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.verifier import Check


def verifier_rewards(check: Check, items: Sequence[CotItem], texts: Sequence[str], G: int) -> torch.Tensor:
    """[N, G] 1.0 where answer ``n * G + g`` passes the task's check against ``items[n].answer``."""
    if len(texts) != len(items) * G:
        raise ValueError(f"{len(texts)} answers for {len(items)} prompts x {G} samples")
    return torch.tensor([[float(check(texts[n * G + g], it.answer)) for g in range(G)]
                         for n, it in enumerate(items)])


def guide_token_logprobs(guide: Guide, items: Sequence[CotItem], texts: Sequence[str],
                         spans: Sequence[Sequence[tuple[int, int]]], G: int, K: int,
                         floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[N * G, K] the guide's log-probability attributed to each token of the learner's answers, and [N * G, K]
    bool: the token is judged (not inside the ``join`` the guide never sees). One ``guide.score`` call.

    Answer ``r`` is scored as the continuation of ``items[r // G].guide_prompt``, with the item's ``join`` (or its
    leading whitespace) removed, as the guide wrote its own CoTs. An answer with nothing left to score (only a
    newline, say) gets ``floor`` on each of its tokens."""
    rows = len(texts)
    out = torch.zeros(rows, K)
    judged = torch.zeros(rows, K, dtype=torch.bool)
    prompts, conts, where = [], [], []
    for r, text in enumerate(texts):
        item = items[r // G]
        cont, lo, _ = TextQuery(item.guide_prompt, "", text, item.join).continuation()
        cut = -lo
        n = len(spans[r])
        for t, (_, e) in enumerate(spans[r]):
            judged[r, t] = e > cut
        if not cont:        # an empty answer: every token of it judged at the floor
            out[r, :n], judged[r, :n] = floor, True
            continue
        prompts.append(item.guide_prompt)
        conts.append(cont)
        where.append((r, cut))
    scored = guide.score(prompts, conts) if prompts else []
    for (r, cut), s in zip(where, scored):
        lp, _ = attribute(s, spans[r], shift=cut)
        out[r, : len(lp)] = torch.tensor(lp)
    return out, judged


def combine(weights: dict[str, float], mask: torch.Tensor, verifier_adv: torch.Tensor | None = None,
            token_reward: torch.Tensor | None = None) -> torch.Tensor:
    """[N * G, K] per-token advantage: ``w_verifier * A_seq`` broadcast over the answer's tokens plus
    ``w_on_policy * r_t``; zero off the answer."""
    adv = torch.zeros(mask.shape)
    if verifier_adv is not None:
        adv = adv + weights["verifier"] * verifier_adv.reshape(-1, 1)
    if token_reward is not None:
        adv = adv + weights["on_policy"] * token_reward
    return adv * mask


def token_mean_loss(logprobs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-sum(A * log pi) / #tokens`` over the answers' tokens (its gradient is the REINFORCE estimate)."""
    m = mask.float()
    return -(adv.detach() * logprobs * m).sum() / m.sum().clamp_min(1)

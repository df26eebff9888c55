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

With ``reward.guide_in_group`` the guide's CoT joins its prompt's group as member ``G`` (mixed-policy GRPO, as in
LUFFY): rows ``N * G + n`` hold the guide's CoT tokens, teacher-forced like the learner's answers; the verifier
judges it, the group's mean and spread include it, and its own advantage is kept only where positive. With
``reward.guide_prefix`` below 1 that member holds only the guide's first tokens (``guide_heads``) and the learner
samples the rest: the opening keeps the clipped advantage, the learner's continuation gets it in full.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rl_statetune_guides import Guide

from rl_statetune.rl.align import TextQuery, attribute
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.policy_gradient import EmaBaseline, advantages
from rl_statetune.rl.verifier import Check


def verifier_rewards(check: Check, items: Sequence[CotItem], texts: Sequence[str], G: int) -> torch.Tensor:
    """[N, G] 1.0 where answer ``n * G + g`` passes the task's check against ``items[n].answer``."""
    if len(texts) != len(items) * G:
        raise ValueError(f"{len(texts)} answers for {len(items)} prompts x {G} samples")
    return torch.tensor([[float(check(texts[n * G + g], it.answer)) for g in range(G)]
                         for n, it in enumerate(items)])


def guide_rows(items: Sequence[CotItem], tokenizer) -> tuple[list[list[int]], list[str]]:
    """The guide's CoT of each item as an answer after its prompt: RWKV token ids (``join + text + suffix``,
    encoded apart from the prompt as the learner's answers are) and the text the verifier judges."""
    return [tokenizer.encode(it.cot) for it in items], [it.cot for it in items]


def guide_heads(rows: Sequence[Sequence[int]], share: float) -> list[list[int]]:
    """The first ``share`` of each guide row's tokens (rounded down, at least one token)."""
    return [list(r[: max(1, int(share * len(r)))]) for r in rows]


def clip_heads(adv: torch.Tensor, first_row: int, heads: Sequence[Sequence[int]]) -> torch.Tensor:
    """``adv`` [rows, K] per-token advantages with the guide's openings (row ``first_row + n``, its first
    ``len(heads[n])`` tokens) clipped at zero: the guide's own text pulls, never pushes."""
    adv = adv.clone()
    for n, h in enumerate(heads):
        adv[first_row + n, : len(h)] = adv[first_row + n, : len(h)].clamp_min(0)
    return adv


def group_verifier_advantages(v_learner: torch.Tensor, v_guide: torch.Tensor, guide_valid: torch.Tensor,
                              mode: str = "group", normalize_std: bool = True,
                              baseline: EmaBaseline | None = None, clip_guide: bool = True,
                              greedy: torch.Tensor | None = None) -> torch.Tensor:
    """[N * G + N] verifier advantages of the learner's answers (rows ``n * G + g``) then the guide's CoTs
    (rows ``N * G + n``), over groups of ``G + 1``: ``v_learner`` [N, G] and ``v_guide`` [N] are 1 / 0 verdicts;
    a guide CoT with ``guide_valid`` False (rejected by ``guide.cot.verify``) is left out of its group. The guide's
    advantage is clipped at zero: a right CoT among wrong answers pulls the state toward it, a wrong one never
    pushes (the learner's wrong answers are pushed down by their own advantages). ``clip_guide`` False leaves it
    whole (where the member is the guide's opening plus the learner's continuation, ``clip_heads`` clips the
    opening's tokens only). ``greedy`` [N]: the verdicts on the learner's greedy answers, mode ``greedy``'s
    baseline (the guide's member then pulls only where the learner's greedy answer is wrong)."""
    N, G = v_learner.shape
    r = torch.cat([v_learner, v_guide.reshape(N, 1)], 1)
    valid = torch.cat([torch.ones(N, G, dtype=torch.bool), guide_valid.reshape(N, 1).bool()], 1)
    adv = advantages(r, valid, mode=mode, normalize_std=normalize_std, baseline=baseline, greedy=greedy)
    return torch.cat([adv[:, :G].reshape(-1), adv[:, G].clamp_min(0) if clip_guide else adv[:, G]])


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
            token_reward: torch.Tensor | None = None, step_adv: torch.Tensor | None = None) -> torch.Tensor:
    """[N * G, K] per-token advantage: ``w_verifier * A_seq`` broadcast over the answer's tokens plus
    ``w_on_policy * r_t`` plus ``w_steps * A_step``; zero off the answer."""
    adv = torch.zeros(mask.shape)
    if verifier_adv is not None:
        adv = adv + weights["verifier"] * verifier_adv.reshape(-1, 1)
    if token_reward is not None:
        adv = adv + weights["on_policy"] * token_reward
    if step_adv is not None:
        adv = adv + weights["steps"] * step_adv
    return adv * mask


def token_mean_loss(logprobs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-sum(A * log pi) / #tokens`` over the answers' tokens (its gradient is the REINFORCE estimate)."""
    m = mask.float()
    return -(adv.detach() * logprobs * m).sum() / m.sum().clamp_min(1)

"""Single-step alignment rewards on a guide's CoT, and the multi-step (rollout) reward.

Every position ``p`` of a CoT batch has a context (prompt + guide CoT before it), a target token ``y_p``
(the guide's next token, re-tokenised with the RWKV tokenizer) and ``G`` actions ``a_pg`` sampled from the
learner. All rewards are ``[P, G]`` tensors:

* ``match``:          ``r = 1[a == y]``
* ``guide_logprob``:  ``r = log p_guide(a | context)``, the guide's log-probability of the action's characters
* ``reverse_kl``:     ``r = log p_guide(a) - log p_learner(a)``; its expectation is ``-KL(p_learner || p_guide)``
  (on-policy distillation)
* ``multistep``:      the learner rolls out ``k`` tokens from a position, the guide scores the continuation:
  ``r = (log p_guide(rollout) - log p_learner(rollout)) / k``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from rl_statetune_guides import Guide

from rl_statetune.rl.align import TextQuery, score_texts, top_k_logprob
from rl_statetune.rl.cot import CotBatch, CotItem


def match_reward(actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[P, G] actions, [P] targets -> [P, G] in {0, 1}."""
    return (actions == targets[:, None]).float()


def guide_logprobs_of_actions(guide: Guide, batch: CotBatch, actions: torch.Tensor, tokenizer,
                              floor: float, rows: Sequence[int] | None = None,
                              counts: Counter | None = None) -> torch.Tensor:
    """[R, G] guide log-probabilities of the learner's actions ``actions[R, G]`` at the CoT positions ``rows``
    (indices into ``batch.positions()``; default all P of them, in order).

    An action equal to the guide's own token takes the log-probability attributed from the guide's scoring of
    its CoT (no extra call). Otherwise, where the CoT was scored with top-k (``ScoredText.top_k``), a guide token
    starts where the learner's token does and the action's text is one of its alternatives, the action takes that
    alternative's log-probability (no extra call). Every other action is scored as text appended to the CoT
    prefix, all of them in one batched ``guide.score`` call. ``counts`` (if given) adds up the actions resolved
    each way: ``own``, ``top_k`` and ``exact``.
    """
    positions = batch.positions()
    rows = list(range(len(positions))) if rows is None else list(rows)
    if len(rows) != actions.shape[0]:
        raise ValueError(f"{actions.shape[0]} rows of actions for {len(rows)} positions")
    targets = batch.targets
    known = batch.guide_lp[batch.mask]
    known_ok = batch.guide_scored[batch.mask]
    out = torch.empty(actions.shape, dtype=torch.float32)
    queries, where = [], []
    counts = Counter() if counts is None else counts
    for i, p in enumerate(rows):
        b, j = positions[p]
        item = batch.items[b]
        start = batch.spans[b][j][0]
        for g in range(actions.shape[1]):
            a = int(actions[i, g])
            if a == int(targets[p]) and bool(known_ok[p]):
                out[i, g], counts["own"] = float(known[p]), counts["own"] + 1
                continue
            text = tokenizer.decode([a])
            lp = None if item.scored is None else top_k_logprob(item.scored, start - len(item.join), text)
            if lp is not None:
                out[i, g], counts["top_k"] = lp, counts["top_k"] + 1
            else:
                queries.append(TextQuery(item.guide_prompt, item.cot[:start], text, item.join))
                where.append((i, g))
    counts["exact"] += len(queries)
    for (i, g), v in zip(where, score_texts(guide, queries, floor)):
        out[i, g] = v
    return out


def guide_logprob_reward(guide_lp: torch.Tensor) -> torch.Tensor:
    return guide_lp


def reverse_kl_reward(guide_lp: torch.Tensor, learner_lp: torch.Tensor) -> torch.Tensor:
    """Per-token reverse-KL reward; ``learner_lp`` is detached (its own gradient has zero expectation)."""
    return guide_lp - learner_lp.detach()


def multistep_reward(guide: Guide, items: Sequence[CotItem], prefix_chars: Sequence[int],
                     rollout_texts: Sequence[Sequence[str]], learner_seq_lp: torch.Tensor, k: int,
                     floor: float) -> torch.Tensor:
    """[N, G] reward of ``G`` rollouts from each of ``N`` branch points.

    Branch point ``n`` continues ``items[n].cot[:prefix_chars[n]]``; ``learner_seq_lp[n, g]`` is the learner's
    log-probability of rollout ``g``. A rollout the guide cannot score (empty, cut inside a character) gets
    ``floor`` per token.
    """
    queries = [TextQuery(it.guide_prompt, it.cot[:c], text, it.join)
               for it, c, texts in zip(items, prefix_chars, rollout_texts) for text in texts]
    lp = torch.tensor(score_texts(guide, queries, floor * k), dtype=torch.float32).view(learner_seq_lp.shape)
    return (lp - learner_seq_lp.detach().float()) / k

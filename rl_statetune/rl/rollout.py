"""Learner rollouts for the multi-step reward: branch from CoT prefixes, sample k tokens, and score them
again with gradient in one teacher-forced forward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl_statetune.generation import sample
from rl_statetune.lm import decode_one
from rl_statetune.model import RWKV7, RecurrentState

InitState = Callable[[int], RecurrentState]


@torch.no_grad()
def sample_rollouts(model: RWKV7, init_state: InitState, idx: torch.Tensor, ends: torch.Tensor, k: int,
                    temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, T] rows whose first ``ends[n]`` tokens are the prefix -> [N, k] sampled continuation tokens."""
    N = idx.shape[0]
    logits, state = model(idx, init_state(N), lengths=ends)
    last = logits[torch.arange(N), ends - 1]
    out = []
    for i in range(k):
        nxt = sample(last, temperature, 1.0, generator)
        out.append(nxt)
        if i + 1 < k:
            last, state = decode_one(model, nxt, state)
    return torch.stack(out, dim=1)


def rollout_mask(rollouts: torch.Tensor, eos_id: int = 0) -> torch.Tensor:
    """[N, k] bool: tokens up to and including the first end-of-text."""
    after_eos = (rollouts == eos_id).long().cumsum(1) - (rollouts == eos_id).long()
    return after_eos == 0


def sequence_logprobs(model: RWKV7, init_state: InitState, idx: torch.Tensor, ends: torch.Tensor,
                      rollouts: torch.Tensor, temperature: float, eos_id: int = 0) -> torch.Tensor:
    """[N] log-probability of each rollout after its prefix (with gradient to the initial state)."""
    N, k = rollouts.shape
    T = int(ends.max()) + k
    rows = torch.zeros(N, T, dtype=torch.long, device=idx.device)
    for n in range(N):
        e = int(ends[n])
        rows[n, :e] = idx[n, :e]
        rows[n, e: e + k] = rollouts[n]
    hidden, _ = model.hidden(rows, init_state(N), lengths=ends + k)
    pos = (ends - 1)[:, None] + torch.arange(k, device=idx.device)[None]       # [N, k] predicting positions
    h = hidden[torch.arange(N, device=idx.device)[:, None], pos]               # [N, k, C]
    logp = torch.log_softmax(model.head(h).float() / temperature, dim=-1)
    lp = logp.gather(-1, rollouts[..., None])[..., 0]
    return (lp * rollout_mask(rollouts, eos_id)).sum(1)

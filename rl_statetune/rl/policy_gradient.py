"""REINFORCE with a baseline, or GRPO-style group normalisation, for a policy whose only parameter is the
initial recurrent state.

Rewards come as ``[N, G]``: ``N`` contexts (CoT positions or rollout branch points), ``G`` actions sampled in
each. The estimator is ``grad J ~= mean_{n,g} A_ng * grad log pi(a_ng | context_n)`` with

* ``group``: ``A = r - mean_g(r)`` per context (GRPO; needs G > 1),
* ``batch``: ``A = r - mean(r)`` over the whole batch,
* ``ema``:   ``A = r - b`` with ``b`` a running mean of past batch rewards,
* ``greedy``: ``A = r - r_greedy`` per context, the baseline being the reward of the policy's own greedy action
  there (ReMax, Li et al. 2023; verl's ``remax``). It is the policy's greedy answers that are scored, so a sample
  earns credit only where it beats them: a right sample where the greedy answer is wrong pulls, a wrong one where
  it is right pushes, and a context whose samples all agree with the greedy answer carries no signal,

each optionally divided by the standard deviation of the same set (``normalize_std``; for ``greedy`` the context's
rewards with the greedy one among them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass
class EmaBaseline:
    decay: float = 0.9
    value: float | None = None

    def update(self, mean_reward: float) -> float:
        """Returns the baseline *before* this batch, then folds the batch in."""
        before = mean_reward if self.value is None else self.value
        self.value = mean_reward if self.value is None else self.decay * self.value + (1 - self.decay) * mean_reward
        return before


def row_mean_std(r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 1] mean and unbiased standard deviation of each row of ``r`` over the entries where ``w`` is 1."""
    n = w.sum(1, keepdim=True).clamp_min(1)
    mean = (r * w).sum(1, keepdim=True) / n
    std = ((((r - mean) * w) ** 2).sum(1, keepdim=True) / (n - 1).clamp_min(1)).sqrt()
    return mean, std


def advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None, mode: str = "group",
               normalize_std: bool = True, baseline: EmaBaseline | None = None,
               greedy: torch.Tensor | None = None) -> torch.Tensor:
    """[N, G] rewards -> [N, G] advantages (zero where ``valid`` is False). ``greedy`` [N]: mode ``greedy``'s
    baseline, the reward of each context's greedy action."""
    r = rewards.float()
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool()
    w = v.float()
    if mode == "greedy":
        if greedy is None:
            raise ValueError("mode 'greedy' needs the reward of each context's greedy action")
        ref = greedy.float().reshape(-1, 1)
        _, std = row_mean_std(torch.cat([r, ref], 1), torch.cat([w, torch.ones_like(ref)], 1))
        centred = (r - ref) * w
    elif mode == "group":
        if r.shape[1] < 2:
            raise ValueError("group advantages need at least 2 samples per context (reward.samples >= 2)")
        mean, std = row_mean_std(r, w)
        centred = (r - mean) * w
    elif mode in ("batch", "ema"):
        n = w.sum().clamp_min(1)
        batch_mean = (r * w).sum() / n
        if mode == "ema":
            if baseline is None:
                raise ValueError("mode 'ema' needs an EmaBaseline")
            mean = torch.tensor(baseline.update(float(batch_mean)))
        else:
            mean = batch_mean
        centred = (r - mean) * w
        std = (((r - batch_mean) * w) ** 2).sum().div((n - 1).clamp_min(1)).sqrt()
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; use group, batch, ema or greedy")
    return centred / (std + EPS) if normalize_std else centred


def weigh_negatives(adv: torch.Tensor, weight: float) -> torch.Tensor:
    """Negative advantages times ``weight`` (W-REINFORCE; 0: only answers better than their baseline pull, as in
    rejection-sampling fine-tuning / RAFT; 1: unchanged)."""
    return adv if weight == 1 else torch.where(adv < 0, adv * weight, adv)


def pg_loss(logprobs: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Surrogate loss ``-mean(A * log pi)`` over valid entries; its gradient is the REINFORCE estimate."""
    w = torch.ones_like(adv) if valid is None else valid.float()
    return -(adv.detach() * logprobs * w).sum() / w.sum().clamp_min(1)


def l2_penalty(state: torch.Tensor, coef: float) -> torch.Tensor:
    """``coef * mean(S0^2)``: the tuned state starts at zero (the frozen model), so this pulls it back."""
    return coef * state.pow(2).mean() if coef > 0 else state.new_zeros(())

"""Probes for tests of the learner's rollout terms: fixed answers in place of sampled ones, the advantages the loss
sees, and the learner's preference between two next tokens."""

from __future__ import annotations

import torch

from rl_statetune.lm import pad_right
from rl_statetune.rl.learner import Learner


def answer_with(monkeypatch, tok, prompts: list[str], answers: list[str]) -> None:
    """Every learner's sampled answers become ``answers``: ``len(answers) // len(prompts)`` per prompt, in order."""
    G = len(answers) // len(prompts)

    def fixed_answers(self, items, heads=None):
        idx, lengths = pad_right([tok.encode(p) for p in prompts for _ in range(G)], 0, self.device)
        ids, n = pad_right([tok.encode(a) for a in answers], 0, self.device)
        return idx, lengths, ids, torch.arange(ids.shape[1])[None] < n[:, None]

    monkeypatch.setattr(Learner, "sample_answers", fixed_answers)


def capture_loss_inputs(monkeypatch) -> dict:
    """The per-token log-probabilities, advantages and mask the rollout loss gets, filled in at each call (the loss
    itself becomes a zero that keeps the graph)."""
    seen: dict = {}

    def capture(logprobs, adv, mask):
        seen.update(lp=logprobs.detach(), adv=adv, mask=mask.cpu())
        return (logprobs * mask).sum() * 0

    monkeypatch.setattr("rl_statetune.rl.learner.token_mean_loss", capture)
    return seen


def preference(learner: Learner, tok, prompt: str, head: str, right: str, wrong: str) -> float:
    """``log p(right) - log p(wrong)`` for the learner's next token after ``prompt`` and the answer's ``head``
    (encoded apart, as the learner's answers are; each word's first token)."""
    with torch.no_grad():
        logits, _ = learner.model(torch.tensor([tok.encode(prompt) + tok.encode(head)]), learner.init_state(1))
    lp = logits[0, -1].float().log_softmax(-1)
    return float(lp[tok.encode(right)[0]] - lp[tok.encode(wrong)[0]])

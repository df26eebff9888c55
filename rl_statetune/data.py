"""Prompt/target examples for state tuning and their tokenised, right-padded batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rl_statetune.config import DataConfig
from rl_statetune.synthetic import problems, reasoning_problems


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str          # what the tuned model should write after the prompt
    answer: str = ""     # for held-out scoring (the synthetic task's number)


@dataclass
class Batch:
    idx: torch.Tensor        # [B, T] prompt + target tokens, right padded with 0
    lengths: torch.Tensor    # [B]
    loss_mask: torch.Tensor  # [B, T-1] True where logits[:, t] must predict idx[:, t+1] (target tokens)

    @property
    def n_target_tokens(self) -> int:
        return int(self.loss_mask.sum())


def load_examples(cfg: DataConfig) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples for the configured task."""
    if cfg.task == "synthetic":
        if cfg.corpus == "reasoning":  # no header in the prompt; the target reasons step by step
            make = reasoning_problems

            def to_ex(p):
                return Example(p.prompt(), p.solution("reason"), str(p.answer))
        else:
            make = problems

            def to_ex(p):
                return Example(p.prompt(), p.solution(cfg.target_format), str(p.answer))
        train = [to_ex(p) for p in make(cfg.train_size, cfg.seed)]
        held = [to_ex(p) for p in make(cfg.eval_size, cfg.seed + 1)]
        seen = {e.prompt for e in train}
        return train, [e for e in held if e.prompt not in seen]
    rows = [json.loads(line) for line in Path(cfg.path).read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if not {"prompt", "target"} <= set(r):
            raise ValueError(f"{cfg.path}:{i + 1}: each row needs 'prompt' and 'target' fields, got {sorted(r)}")
    exs = [Example(r["prompt"], r["target"], str(r.get("answer", ""))) for r in rows]
    n_eval = min(cfg.eval_size, len(exs) // 5)
    return exs[n_eval:][: cfg.train_size], exs[:n_eval]


def collate(examples: list[Example], tokenizer, max_len: int) -> Batch:
    """Tokenise prompt and target separately (so the boundary is exact) and mask the loss to the target."""
    rows, starts = [], []
    for ex in examples:
        p, t = tokenizer.encode(ex.prompt), tokenizer.encode(ex.target)
        ids = (p + t)[:max_len]
        rows.append(ids)
        starts.append(len(p))
    T = max(map(len, rows))
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T - 1, dtype=torch.bool)
    for r, (ids, s) in enumerate(zip(rows, starts)):
        idx[r, : len(ids)] = torch.tensor(ids)
        mask[r, max(s - 1, 0): len(ids) - 1] = True
    return Batch(idx, torch.tensor([len(x) for x in rows]), mask)

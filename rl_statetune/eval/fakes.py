"""Tiny stand-ins obeying the evaluation contract, for tests and examples (not real language models).

* ``ByteTokenizer``: one token per UTF-8 byte (id = byte + 1), id 0 = end of text.
* ``BiasBigramLM``: logits_t = table[x_t] + s_t with a recurrent bias state s_t = decay * s_{t-1} + onehot(x_t),
  so it is genuinely recurrent: the initial state shifts every prediction and prefills can be continued.
* ``ScriptedLM``: after a trigger token it emits a fixed script, one token per step (for decoding tests).

Both models return a ``FakeState`` with ``select`` unless built with ``selectable=False`` (then a bare tensor),
to exercise the evaluators' two code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ByteTokenizer:
    eos_id = 0
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")


@dataclass
class FakeState:
    data: torch.Tensor  # batch first

    def select(self, rows) -> FakeState:
        return FakeState(self.data[torch.as_tensor(rows, dtype=torch.long, device=self.data.device)])


def _unwrap(state, default: torch.Tensor) -> torch.Tensor:
    if state is None:
        return default
    data = state.data if isinstance(state, FakeState) else state
    if data.shape[0] != default.shape[0]:
        raise ValueError(f"state batch {data.shape[0]} != input batch {default.shape[0]}")
    return data


def _at_lengths(per_step: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """per_step [B, T, ...] -> the entry at each row's last real position."""
    if lengths is None:
        return per_step[:, -1]
    return per_step[torch.arange(per_step.shape[0]), lengths.cpu() - 1]


class BiasBigramLM(nn.Module):
    def __init__(self, vocab_size: int = 257, decay: float = 0.5, seed: int = 0, selectable: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g), requires_grad=False)
        self.decay, self.selectable = decay, selectable
        self.calls = 0

    def forward(self, idx: torch.Tensor, state=None, lengths: torch.Tensor | None = None):
        self.calls += 1
        B, T = idx.shape
        V = self.table.shape[0]
        s = _unwrap(state, torch.zeros(B, V)).clone()
        logits, states = [], []
        for t in range(T):
            s = self.decay * s + nn.functional.one_hot(idx[:, t], V).float()
            states.append(s)
            logits.append(self.table[idx[:, t]] + s)
        new = _at_lengths(torch.stack(states, 1), lengths)
        return torch.stack(logits, 1), (FakeState(new) if self.selectable else new)


class ScriptedLM(nn.Module):
    """Emits ``scripts[c]`` token by token after the last trigger character ``c`` seen (then end of text);
    before any trigger it predicts end of text."""

    def __init__(self, scripts: dict[str, str], tokenizer: ByteTokenizer | None = None, selectable: bool = True):
        super().__init__()
        tok = tokenizer or ByteTokenizer()
        self.vocab_size = tok.vocab_size
        self.scripts = [tok.encode(s) + [tok.eos_id] for s in scripts.values()]
        self.triggers = {tok.encode(c)[0]: k for k, c in enumerate(scripts)}
        self.selectable = selectable
        self.steps = 0

    def forward(self, idx: torch.Tensor, state=None, lengths: torch.Tensor | None = None):
        self.steps += 1
        B, T = idx.shape
        s = _unwrap(state, torch.full((B, 2), -1, dtype=torch.long)).clone()  # (script, position)
        logits, states = torch.zeros(B, T, self.vocab_size), []
        for t in range(T):
            for b in range(B):
                tok = int(idx[b, t])
                if tok in self.triggers:  # (re)start on every trigger: the prompt's last one wins
                    s[b] = torch.tensor([self.triggers[tok], 0])
                elif s[b, 0] >= 0:
                    s[b, 1] += 1
                if s[b, 0] >= 0:
                    script = self.scripts[int(s[b, 0])]
                    logits[b, t, script[min(int(s[b, 1]), len(script) - 1)]] = 10.0
            states.append(s.clone())
        new = _at_lengths(torch.stack(states, 1), lengths)
        return logits, (FakeState(new) if self.selectable else new)

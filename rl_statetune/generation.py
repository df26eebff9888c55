"""Batched decoding: one parallel prefill of the (right-padded) prompts, then one token per step."""

from __future__ import annotations

import torch

from rl_statetune.model import RecurrentState


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, init_state=None,
             stop: tuple[str, ...] = ("\n",), temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> list[str]:
    """Complete each prompt. ``init_state(batch_size) -> RecurrentState | None`` supplies a tuned state.

    Greedy when temperature == 0. A row stops at end-of-text, at any ``stop`` string (which is cut from the
    text), or after ``max_new_tokens``.
    """
    if not prompts:
        return []
    ids = [tokenizer.encode(p) for p in prompts]
    if any(len(x) == 0 for x in ids):
        raise ValueError("every prompt must contain at least one token")
    B = len(ids)
    idx = torch.zeros(B, max(map(len, ids)), dtype=torch.long)
    for r, x in enumerate(ids):
        idx[r, : len(x)] = torch.tensor(x)
    lengths = torch.tensor([len(x) for x in ids])
    state: RecurrentState | None = init_state(B) if init_state else None
    logits, state = model(idx, state, lengths=lengths)
    last = logits[torch.arange(B), lengths - 1]
    out: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens):
        nxt = sample(last, temperature, top_p, generator)
        for r in torch.nonzero(~done).flatten().tolist():
            t = int(nxt[r])
            if t == tokenizer.eos_id:
                done[r] = True
                continue
            out[r].append(t)
            texts[r] = tokenizer.decode(out[r])
            if any(s in texts[r] for s in stop):
                done[r] = True
        if bool(done.all()):
            break
        logits, state = model(nxt[:, None], state)
        last = logits[:, -1]
    return [_cut(t, stop) for t in texts]


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] -> [B] token ids (argmax at temperature 0; nucleus sampling otherwise)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cut(text: str, stop: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]

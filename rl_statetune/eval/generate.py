"""Batched greedy decoding for a recurrent LM: one prefill over right-padded prompts, then one token per step.

A row stops at the end-of-text token, when its decoded output contains a stop string, or after
``max_new_tokens``; the returned text is cut before the earliest stop string (as lm-evaluation-harness's
``generate_until``). Finished rows are dropped from the batch when the state supports ``select``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from rl_statetune.eval.api import (
    InitStateFn,
    Tokenizer,
    can_select,
    check_logits,
    initial_state,
    model_device,
    pad_right,
)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def _step(model: Any, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    idx = tokens.unsqueeze(1)
    logits, state = model(idx, state=state)
    check_logits(logits, idx)
    return logits[:, -1].argmax(-1), state


@torch.inference_mode()
def greedy_generate(model: Any, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256,
                    stop: Sequence[str] = (), init_state_fn: InitStateFn | None = None, batch_size: int = 8,
                    progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuation of each prompt (the prompt itself is not included)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    encoded = [list(tokenizer.encode(p)) or [tokenizer.eos_id] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        batch = order[start:start + batch_size]
        idx, lengths = pad_right([encoded[i] for i in batch], 0, device)
        logits, state = model(idx, state=initial_state(init_state_fn, len(batch)), lengths=lengths)
        check_logits(logits, idx)
        nxt = logits[torch.arange(len(batch), device=logits.device), lengths.to(logits.device) - 1].argmax(-1)
        generated: list[list[int]] = [[] for _ in batch]
        texts = [""] * len(batch)
        done = [False] * len(batch)
        rows = list(range(len(batch)))  # batch position of each row still in `state`
        for step in range(max_new_tokens):
            for r, b in enumerate(rows):
                if done[b]:
                    continue
                tok = int(nxt[r])
                if tok == tokenizer.eos_id:
                    done[b] = True
                    continue
                generated[b].append(tok)
                texts[b] = tokenizer.decode(generated[b])
                done[b] = any(s and s in texts[b] for s in stop)
            if all(done) or step == max_new_tokens - 1:
                break
            keep = [r for r, b in enumerate(rows) if not done[b]]
            if len(keep) < len(rows) and can_select(state):
                state, nxt = state.select(keep), nxt[torch.as_tensor(keep, device=nxt.device)]
                rows = [rows[r] for r in keep]
            nxt, state = _step(model, nxt, state)
        for b, i in enumerate(batch):
            outputs[i] = truncate_at_stop(texts[b], stop)
    return outputs

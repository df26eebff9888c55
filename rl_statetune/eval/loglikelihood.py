"""Batched log-likelihood of continuations given contexts, for a recurrent LM.

Tokenisation follows lm-evaluation-harness: trailing whitespace of the context moves to the continuation, the
context is encoded alone and the continuation is what encoding ``context + continuation`` adds after it. An empty
context is replaced by the end-of-text token.

Two execution paths give the same numbers (up to float rounding):

* prefix sharing (state has ``select``): each distinct context is run once; its last logits score the first
  continuation token and its final state, repeated per request, continues over the rest of the continuation.
  Single-token continuations (MMLU's " A".." D") then cost no extra forward at all;
* full sequences (any state): ``context + continuation[:-1]`` in one forward per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from rl_statetune.lm import (
    InitStateFn,
    Tokenizer,
    can_select,
    check_logits,
    initial_state,
    model_device,
    pad_right,
)

Request = tuple[list[int], list[int]]
"""(context tokens, continuation tokens)."""


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """Token ids of a (context, continuation) pair, split the way lm-evaluation-harness splits them."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    if not continuation:
        raise ValueError("empty continuation: nothing to score")
    if not context:
        return [tokenizer.eos_id], list(tokenizer.encode(continuation))
    ctx = list(tokenizer.encode(context))
    whole = list(tokenizer.encode(context + continuation))
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after context")
    return ctx, cont


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) under logits [B, T, V] -> [B, T] (float32)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _chunks(items: Sequence[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.inference_mode()
def loglikelihoods(model: Any, requests: Sequence[Request], init_state_fn: InitStateFn | None = None,
                   batch_size: int = 8, progress: bool = True, desc: str = "loglikelihood",
                   share_prefix: bool | None = None) -> list[float]:
    """Summed log-probability of each request's continuation tokens given its context tokens.

    ``share_prefix`` None = use prefix sharing when the model's state supports ``select``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError(f"request {i} has an empty context or continuation")
    if not requests:
        return []
    out = [0.0] * len(requests)
    with tqdm(total=len(requests), desc=desc, disable=not progress, leave=False) as bar:
        if share_prefix is None or share_prefix:
            done = _prefix_shared(model, requests, init_state_fn, batch_size, out, bar, strict=bool(share_prefix))
            if done:
                return out
        _full_sequences(model, requests, init_state_fn, batch_size, out, bar)
    return out


def _full_sequences(model, requests, init_state_fn, batch_size, out, bar) -> None:
    device = model_device(model)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    for rows in _chunks(order, batch_size):
        seqs = [requests[i][0] + requests[i][1][:-1] for i in rows]
        idx, lengths = pad_right(seqs, 0, device)
        logits, _ = model(idx, state=initial_state(init_state_fn, len(rows)), lengths=lengths)
        check_logits(logits, idx)
        for b, i in enumerate(rows):
            ctx, cont = requests[i]
            start = len(ctx) - 1
            lg = logits[b:b + 1, start:start + len(cont)]
            tgt = torch.as_tensor(cont, device=lg.device).unsqueeze(0)
            out[i] = _token_logprobs(lg, tgt).sum().item()
        bar.update(len(rows))


def _prefix_shared(model, requests, init_state_fn, batch_size, out, bar, strict: bool) -> bool:
    """Returns False (having computed nothing) when the model's state cannot ``select`` rows."""
    device = model_device(model)
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        by_ctx.setdefault(tuple(ctx), []).append(i)
    contexts = sorted(by_ctx, key=len, reverse=True)
    for group in _chunks(contexts, batch_size):
        idx, lengths = pad_right(group, 0, device)
        logits, state = model(idx, state=initial_state(init_state_fn, len(group)), lengths=lengths)
        check_logits(logits, idx)
        if not can_select(state):
            if strict:
                raise TypeError(f"share_prefix=True needs a state with select(rows); got {type(state).__name__}")
            return False
        last = logits[torch.arange(len(group), device=logits.device), lengths.to(logits.device) - 1].float()
        last = last.log_softmax(-1)
        rest: list[tuple[int, int]] = []  # (request, context row) with more than one continuation token
        for row, ctx in enumerate(group):
            for i in by_ctx[ctx]:
                cont = requests[i][1]
                out[i] = last[row, cont[0]].item()
                if len(cont) > 1:
                    rest.append((i, row))
                else:
                    bar.update(1)
        rest.sort(key=lambda r: -len(requests[r[0]][1]))
        for sub in _chunks(rest, batch_size):
            conts = [requests[i][1] for i, _ in sub]
            idx, lengths = pad_right([c[:-1] for c in conts], 0, device)
            lg, _ = model(idx, state=state.select([row for _, row in sub]), lengths=lengths)
            check_logits(lg, idx)
            tgt, _ = pad_right([c[1:] for c in conts], 0, lg.device)
            lp = _token_logprobs(lg, tgt)
            for b, (i, _) in enumerate(sub):
                out[i] += lp[b, : len(conts[b]) - 1].sum().item()
            bar.update(len(sub))
    return True

"""Learner rollouts: k tokens branched from CoT prefixes (the multi-step reward), or whole answers from the task
prompts (the rollout terms: verifier, on-policy guide scoring); sampled batched on the recurrent path, then scored
again with gradient in one teacher-forced forward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl_statetune.generation import sample
from rl_statetune.lm import check_finite, decode_one
from rl_statetune.model import RWKV7, RecurrentState

InitState = Callable[[int], RecurrentState]


def sample_rollouts(model: RWKV7, init_state: InitState, idx: torch.Tensor, ends: torch.Tensor, k: int,
                    temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, T] rows whose first ``ends[n]`` tokens are the prefix -> [N, k] sampled continuation tokens (no stop)."""
    no_stop = torch.zeros(model.head.weight.shape[0], dtype=torch.bool)
    return sample_answers(model, init_state, idx, ends, k, temperature, no_stop, generator)[0]


def rollout_mask(rollouts: torch.Tensor, eos_id: int = 0) -> torch.Tensor:
    """[N, k] bool: tokens up to and including the first end-of-text."""
    after_eos = (rollouts == eos_id).long().cumsum(1) - (rollouts == eos_id).long()
    return after_eos == 0


def sequence_logprobs(model: RWKV7, init_state: InitState, idx: torch.Tensor, ends: torch.Tensor,
                      rollouts: torch.Tensor, temperature: float, eos_id: int = 0) -> torch.Tensor:
    """[N] log-probability of each rollout after its prefix (with gradient to the initial state)."""
    keep = rollout_mask(rollouts, eos_id)
    return (token_logprobs(model, init_state, idx, ends, rollouts, temperature, keep) * keep).sum(1)


def stop_token_mask(tokenizer, vocab_size: int, stop: str = "\n") -> torch.Tensor:
    """[V] bool: tokens whose bytes hold ``stop`` (an answer line ends with them), end-of-text, and the ids the
    tokenizer has no bytes for (the head's padding rows)."""
    needle = stop.encode()
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(vocab_size):
        try:
            mask[i] = bool(needle) and needle in tokenizer.token_bytes(i)
        except (KeyError, IndexError):
            mask[i] = True
    mask[tokenizer.eos_id] = True
    return mask


@torch.no_grad()
def sample_answers(model: RWKV7, init_state: InitState, idx: torch.Tensor, lengths: torch.Tensor,
                   max_new_tokens: int, temperature: float, stop_mask: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one answer per row of right-padded prompts ``idx`` [N, T] (``lengths`` [N]), batched on the
    recurrent path, until a stop token (kept) or ``max_new_tokens``. Returns ids [N, K] (0 after the end) and
    mask [N, K] (True on the answer's tokens, the stop token included)."""
    N = idx.shape[0]
    logits, state = model(idx, init_state(N), lengths=lengths)
    last = logits[torch.arange(N), lengths - 1]
    stop_mask = stop_mask.to(idx.device)
    live = torch.arange(N, device=idx.device)     # the rows still writing; finished ones leave the batch
    ids = torch.zeros(N, max_new_tokens, dtype=torch.long, device=idx.device)
    masks = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=idx.device)
    for i in range(max_new_tokens):
        check_finite(last, "the learner's sampling logits")
        nxt = sample(last, temperature, 1.0, generator)
        ids[live, i], masks[live, i] = nxt, True
        going = ~stop_mask[nxt]
        if not bool(going.any()) or i + 1 == max_new_tokens:
            break
        if not bool(going.all()):
            state, live, nxt = state.select(going.nonzero()[:, 0]), live[going], nxt[going]
        last, state = decode_one(model, nxt, state)
    return ids[:, : i + 1], masks[:, : i + 1]


def token_logprobs(model: RWKV7, init_state: InitState, idx: torch.Tensor, ends: torch.Tensor,
                   rollouts: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[N, k] log-probability of each rollout token after its prefix ``idx[n, :ends[n]]``, in one teacher-forced
    forward with gradient into the tunables (through ``init_state``). With ``mask`` [N, k] the head runs on the
    masked tokens only (the others read 0): at a 65k vocabulary the head and its softmax are most of the cost."""
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
    keep = torch.ones(N, k, dtype=torch.bool, device=idx.device) if mask is None else mask.to(idx.device)
    logits = model.head(h[keep]).float() / temperature                        # [P, V]
    picked = logits.gather(-1, rollouts[keep][:, None])[:, 0] - torch.logsumexp(logits, -1)
    return torch.zeros(N, k, dtype=picked.dtype, device=idx.device).masked_scatter(keep, picked)


def append_rows(ids: torch.Tensor, mask: torch.Tensor, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers ``ids`` / ``mask`` [N, K] with token lists ``rows`` appended below them, both padded to the longer
    width (0 ids, False mask after each answer's end)."""
    K = max([ids.shape[1]] + [len(r) for r in rows])
    out = torch.zeros(ids.shape[0] + len(rows), K, dtype=ids.dtype, device=ids.device)
    out_mask = torch.zeros(out.shape, dtype=torch.bool, device=ids.device)
    out[: ids.shape[0], : ids.shape[1]], out_mask[: ids.shape[0], : ids.shape[1]] = ids, mask
    for i, r in enumerate(rows):
        out[ids.shape[0] + i, : len(r)] = torch.tensor(r, dtype=ids.dtype)
        out_mask[ids.shape[0] + i, : len(r)] = True
    return out, out_mask


def append_continuations(idx: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                         rows: list[tuple[int, list[int], list[int]]]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompts ``idx`` / ``lengths`` and answers ``ids`` / ``mask`` with one more row per
    ``(r, head, tokens)``: its prompt is row ``r``'s prompt followed by ``head``, its answer ``tokens`` (so only
    they are scored)."""
    prompt_mask = torch.arange(idx.shape[1], device=idx.device)[None] < lengths[:, None]
    idx, _ = append_rows(idx, prompt_mask, [idx[r, : lengths[r]].tolist() + head for r, head, _ in rows])
    lengths = torch.cat([lengths, torch.tensor([int(lengths[r]) + len(head) for r, head, _ in rows],
                                               dtype=lengths.dtype, device=lengths.device)])
    ids, mask = append_rows(ids, mask, [tokens for _, _, tokens in rows])
    return idx, lengths, ids, mask

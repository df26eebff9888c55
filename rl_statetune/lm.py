"""The recurrent-LM contract that decoding and the evaluators are written against, and small batching helpers.

Model: ``logits, state = model(idx, state=None, lengths=None)`` with ``idx`` [B, T] (right padded, ``lengths``
[B] real lengths), ``logits`` [B, T, V] (``logits[:, t]`` predicts token t + 1) and ``state`` an opaque recurrent
state taken at each row's last real token. A state that also has ``select(rows)`` (keep / repeat batch rows, as
``rl_statetune.model.RecurrentState`` does) lets the evaluators share a prompt's prefill between its choices and
drop finished rows while decoding; without it they fall back to full-sequence forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Tokenizer(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class RecurrentLM(Protocol):
    def __call__(self, idx: torch.Tensor, state: Any = None,
                 lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]: ...


InitStateFn = Callable[[int], Any]
"""``init_state_fn(batch_size) -> state or None``: the (tuned) state the first forward of a batch starts from."""


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for parameter-free models)."""
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


def initial_state(init_state_fn: InitStateFn | None, batch_size: int) -> Any:
    return None if init_state_fn is None else init_state_fn(batch_size)


def can_select(state: Any) -> bool:
    """Whether ``state.select(rows)`` keeps batch rows (a bare tensor's ``select(dim, index)`` does not)."""
    return not isinstance(state, torch.Tensor) and callable(getattr(state, "select", None))


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``idx`` [B, T] and ``lengths`` [B] (every list must be non-empty)."""
    if not seqs:
        raise ValueError("pad_right needs at least one sequence")
    lengths = [len(s) for s in seqs]
    if min(lengths) == 0:
        raise ValueError("cannot run the model on an empty token sequence")
    idx = torch.full((len(seqs), max(lengths)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return idx.to(device), torch.tensor(lengths, dtype=torch.long, device=device)


class NonFiniteLogits(ValueError):
    """The model's logits (or a distribution made from them) hold NaN / inf: a diverged state or model. Callers
    that know the state file add its name."""


def check_finite(logits: torch.Tensor, what: str = "the model's logits") -> None:
    # the sum is finite unless an entry is not (or it overflows, which the exact check below then clears): one
    # reduction instead of an element-wise pass, which cost 4 ms per decode step at a 65k vocabulary
    if not bool(torch.isfinite(logits.sum())) and not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogits(f"NaN or inf in {what} (a diverged state or model)")


def decode_one(model: Any, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """One token per row, tokens [B] -> (logits [B, V], state): the model's dedicated ``decode`` step where it has
    one (``RWKV7.decode``), else a forward of [B, 1]."""
    step = getattr(model, "decode", None)
    if callable(step):
        logits, state = step(tokens, state)
        check_finite(logits)
        return logits, state
    logits, state = model(tokens[:, None], state)
    check_logits(logits, tokens[:, None])
    return logits[:, -1], state


def check_logits(logits: torch.Tensor, idx: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape[:2] != idx.shape:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(idx.shape)}; "
                         "expected [B, T, V]")
    check_finite(logits)

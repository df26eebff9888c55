"""Greedy decoding for generative tasks (GSM8K): the package's decoder at temperature 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rl_statetune.lm import InitStateFn, Tokenizer
from rl_statetune.generation import generate, truncate_at_stop

__all__ = ["greedy_generate", "truncate_at_stop"]


@torch.inference_mode()
def greedy_generate(model: Any, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256,
                    stop: Sequence[str] = (), init_state_fn: InitStateFn | None = None, batch_size: int = 8,
                    progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuation of each prompt (the prompt itself is not included)."""
    return generate(model, tokenizer, prompts, max_new_tokens, init_state=init_state_fn, stop=tuple(stop),
                    batch_size=batch_size, progress=progress, desc=desc)

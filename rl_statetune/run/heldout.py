"""Held-out accuracy: greedy completions from the (tuned) state, scored by the task's rule; with the test-time
compute they took (mean generated tokens per answer) and their wall time."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from rl_statetune.config import RunConfig
from rl_statetune.data import Example
from rl_statetune.generation import generate
from rl_statetune.state import TimeState, initial_state_fn
from rl_statetune.synthetic import extract_answer, generated_tokens


@dataclass(frozen=True)
class HeldOut:
    accuracy: float
    mean_tokens: float   # generated tokens per answer: the answer line's tokens plus the newline that ended it
    seconds: float
    outputs: tuple[str, ...] = ()   # the completions, in example order

    @classmethod
    def none(cls) -> HeldOut:
        return cls(math.nan, math.nan, 0.0)


def held_out(model, tokenizer, examples: list[Example], tunable: TimeState | None = None,
             target_format: str | None = None, max_new_tokens: int = 32, batch_size: int = 32) -> HeldOut:
    """The synthetic task's answer in ``target_format``, or (jsonl tasks) an exact match of the target's first
    line. NaN for no examples."""
    if not examples:
        return HeldOut.none()
    t0 = time.time()
    outs = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens,
                    init_state=initial_state_fn(model, tunable), batch_size=batch_size)
    seconds = time.time() - t0
    correct = 0
    for e, o in zip(examples, outs):
        if target_format is not None:
            correct += extract_answer(o, target_format) == int(e.answer)
        else:
            correct += o.strip() == e.target.strip().split("\n")[0]
    return HeldOut(correct / len(examples), generated_tokens(tokenizer, outs) / len(outs), seconds, tuple(outs))


def held_out_accuracy(model, tokenizer, examples: list[Example], tunable: TimeState | None = None,
                      target_format: str | None = None, max_new_tokens: int = 32, batch_size: int = 32) -> float:
    return held_out(model, tokenizer, examples, tunable, target_format, max_new_tokens, batch_size).accuracy


def run_held_out(cfg: RunConfig, model, tokenizer, held: list[Example], tunable: TimeState | None) -> HeldOut:
    """``held_out`` as a run configures it; NaN when ``train.eval`` is off."""
    if not cfg.train.eval:
        return HeldOut.none()
    fmt = cfg.data.target_format if cfg.data.task == "synthetic" else None
    return held_out(model, tokenizer, held, tunable, fmt, cfg.train.eval_max_new_tokens)

"""Held-out accuracy: greedy completions from the (tuned) state, scored by the task's rule."""

from __future__ import annotations

from rl_statetune.config import RunConfig
from rl_statetune.data import Example
from rl_statetune.generation import generate
from rl_statetune.state import TimeState, initial_state_fn
from rl_statetune.synthetic import extract_answer


def held_out_accuracy(model, tokenizer, examples: list[Example], tunable: TimeState | None = None,
                      target_format: str | None = None, max_new_tokens: int = 32, batch_size: int = 32) -> float:
    """The synthetic task's answer in ``target_format``, or (jsonl tasks) an exact match of the target's first
    line. NaN for no examples."""
    if not examples:
        return float("nan")
    outs = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens,
                    init_state=initial_state_fn(model, tunable), batch_size=batch_size)
    correct = 0
    for e, o in zip(examples, outs):
        if target_format is not None:
            correct += extract_answer(o, target_format) == int(e.answer)
        else:
            correct += o.strip() == e.target.strip().split("\n")[0]
    return correct / len(examples)


def run_accuracy(cfg: RunConfig, model, tokenizer, held: list[Example], tunable: TimeState | None) -> float:
    """``held_out_accuracy`` as a run configures it; NaN when ``train.eval`` is off."""
    if not cfg.train.eval:
        return float("nan")
    fmt = cfg.data.target_format if cfg.data.task == "synthetic" else None
    return held_out_accuracy(model, tokenizer, held, tunable, fmt, cfg.train.eval_max_new_tokens)

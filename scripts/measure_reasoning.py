"""Held-out figures for the reasoning task: accuracy, share of step-by-step answers, generated tokens, wall time.

    python scripts/measure_reasoning.py --model embedded:reason                        # frozen, no header
    python scripts/measure_reasoning.py --model embedded:reason --mode reason          # frozen, 'Mode: reason'
    python scripts/measure_reasoning.py --model embedded:reason --state runs/reasoning/state.pth   # tuned

``--config`` is a tune or an RL config (only its run sections are read: model, data, train, ...). The held-out
problems are the ones ``configs/quickstart.yaml`` scores (``data.load_examples``), prompted with no
header unless ``--mode`` names one. Greedy decoding up to the first newline, as the trainer's held-out accuracy.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace

import torch
from pydantic import ConfigDict

from rl_statetune.checkpoint import load_model
from rl_statetune.config import RunConfig, load_config
from rl_statetune.data import load_examples
from rl_statetune.run.heldout import held_out
from rl_statetune.synthetic import is_reasoning, mode_header
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.upscale import load_tunable


class RunSections(RunConfig):
    """The run sections of a tune or RL config; the RL-only sections (guide, reward, pg, distributed) are skipped."""
    model_config = ConfigDict(extra="ignore", frozen=True)


def step_accuracy(outputs: list[str]) -> float | None:
    """Share of the written steps 'a + b = c.' whose c is right for the a and b the model wrote."""
    steps = [m for o in outputs for m in re.findall(r"(\d+) ([+-]) (\d+) = (-?\d+)\.", o.split("\n")[0])]
    ok = sum(int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) for a, op, b, c in steps)
    return round(ok / len(steps), 4) if steps else None


def measure(model, tok, examples, tunable=None, mode: str | None = None, max_new_tokens: int = 80,
            batch_size: int = 32) -> dict:
    prompted = [replace(e, prompt=(mode_header(mode) if mode else "") + e.prompt) for e in examples]
    res = held_out(model, tok, prompted, tunable, "sentence", max_new_tokens, batch_size)
    outs = res.outputs
    return {"n": len(examples), "accuracy": round(res.accuracy, 4),
            "reasoning_share": round(sum(map(is_reasoning, outs)) / len(outs), 4),
            "mean_generated_tokens": round(res.mean_tokens, 2), "step_accuracy": step_accuracy(outs),
            "wall_s": round(res.seconds, 1), "example": outs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml", help="the held-out set comes from its data section")
    ap.add_argument("--model", default=None, help="default: the config's model.path")
    ap.add_argument("--state", default=None, help="a tuned state file (.pth / .safetensors)")
    ap.add_argument("--mode", choices=["direct", "reason"], default=None, help="prepend this mode header")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's train.eval_max_new_tokens")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N held-out problems")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, RunSections)
    model = load_model(args.model or cfg.model.path, cfg.model.dtype, backend=cfg.model.wkv_backend)
    tunable = load_tunable(args.state, model.config) if args.state else None
    _, held = load_examples(cfg.data)
    held = held[: args.limit]
    res = measure(model, WorldTokenizer(), held, tunable, args.mode,
                  args.max_new_tokens or cfg.train.eval_max_new_tokens)
    print(json.dumps({"model": args.model or cfg.model.path, "state": args.state, "mode": args.mode, **res}))


if __name__ == "__main__":
    main()

"""``rl-statetune eval``: evaluate a frozen RWKV-7 with its own initial state and/or tuned states.

    rl-statetune eval --model M.pth [--state S1.pth --state S2.pth] --tasks mmlu,gsm8k --limit 100 \\
        --out DIR [--compare] [--data-file mmlu@test=test.jsonl --data-file mmlu@dev=dev.jsonl]

Without ``--state`` the model's own initial state ("base") is evaluated; with states, each state is evaluated and
``--compare`` adds the base run and deltas against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rl_statetune.lm import InitStateFn
from rl_statetune.eval.report import write_report
from rl_statetune.eval.runner import parse_tasks, run_eval
from rl_statetune.eval.tasks import TASKS

BASE = "base"


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="RWKV-7 checkpoint (.pth / .safetensors / HF folder)")
    parser.add_argument("--state", action="append", default=[], metavar="PATH",
                        help="tuned state file; repeat to evaluate several (named by file stem)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated tasks from {{{', '.join(TASKS)}}}; name:config picks a Hub config")
    parser.add_argument("--limit", type=int, default=None, help="score at most N docs per task")
    parser.add_argument("--num-fewshot", type=int, default=None, help="default: per task (gsm8k 5, others 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget (gsm8k)")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed")
    parser.add_argument("--data-file", action="append", default=[], metavar="TASK[@SPLIT]=PATH",
                        help="local jsonl/parquet in the Hub schema instead of the Hub (repeatable)")
    parser.add_argument("--out", required=True, help="output directory for results.json/.md/.png and samples")
    parser.add_argument("--compare", action="store_true", help="also run the base state and report deltas")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_data_files(items: list[str]) -> dict[str, Any]:
    """``["mmlu=a.jsonl", "gsm8k@test=t.jsonl", "gsm8k@train=tr.jsonl"]`` -> run_eval's ``data_files``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"--data-file expects TASK[@SPLIT]=PATH, got {item!r}")
        task, _, split = key.partition("@")
        if split:
            if isinstance(out.get(task), str):
                raise ValueError(f"--data-file for {task!r} mixes a plain path with per-split paths")
            out.setdefault(task, {})[split] = path
        else:
            if task in out:
                raise ValueError(f"--data-file given twice for {task!r}")
            out[task] = path
    return out


def _run_names(state_paths: list[str]) -> list[str]:
    names: list[str] = []
    for p in state_paths:
        stem, n = Path(p).stem, 2
        name = stem
        while name in names or name == BASE:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def _load(model_path: str, state_paths: list[str], device: str = "cpu") -> tuple[Any, Any, dict[str, InitStateFn]]:
    """Model, tokenizer and {run name: init_state_fn} — the one place that knows how checkpoints load."""
    from rl_statetune.checkpoint import load_model
    from rl_statetune.tokenizer import WorldTokenizer

    model = load_model(model_path, device=device)
    states: dict[str, InitStateFn] = {}
    if state_paths:
        from rl_statetune.state import initial_state_fn, load_state
        from rl_statetune.upscale import tunable_from_file

        for name, path in zip(_run_names(state_paths), state_paths):
            state_file = load_state(path)
            state_file.check_fits(model.config, source=str(path))
            states[name] = initial_state_fn(model, tunable_from_file(state_file, model.config).to(device))
    return model, WorldTokenizer(), states


def eval_main(args: argparse.Namespace) -> int:
    tasks = parse_tasks(args.tasks)
    data_files = parse_data_files(args.data_file)
    model, tokenizer, states = _load(args.model, args.state, args.device)
    plan: dict[str, InitStateFn | None] = {}
    if not states or args.compare:
        plan[BASE] = None
    plan.update(states)
    runs = {}
    for name, fn in plan.items():
        print(f"[eval] {name}: {', '.join(tasks)}", file=sys.stderr)
        runs[name] = run_eval(model, tokenizer, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                              data_files=data_files, init_state_fn=fn, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.no_progress)
    extra = {"model": str(args.model), "states": dict(zip(states, args.state))}
    paths = write_report(args.out, runs, base=BASE if args.compare and states else None, extra_config=extra)
    print(paths["markdown"].read_text())
    print(json.dumps({k: str(v) for k, v in paths.items()}), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m rl_statetune.eval.cli``)."""
    parser = add_eval_args(argparse.ArgumentParser(prog="rl-statetune eval", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return eval_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

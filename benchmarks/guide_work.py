#!/usr/bin/env python
"""Guide work per RL step for the guide-scored rewards: how it grows with the samples per position, with and
without the guide's top-k (``reward.guide_top_k``).

    python benchmarks/guide_work.py --config configs/rl_cpu_demo.yaml \\
        --guide configs/guides/task_guide_transformers.yaml --samples 2 4 8 --top-k 0 20

Each cell is a short in-process RL run (``reward.kind: guide_logprob``, no held-out evaluation) read back from
its ``metrics.jsonl``; per step, mean over steps: the learner's sampled actions (CoT positions x samples), how
they got their guide log-probability (the guide's own token / its top-k / an exact query), the reward's guide
calls, queries and guide tokens, the CoT tokens the guide scored, and the seconds of the step. Speed compares
only within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.driver import run_rl

KEYS = ("reward_actions_own", "reward_actions_top_k", "reward_actions_exact", "reward_guide_calls",
        "reward_guide_queries", "reward_guide_tokens", "cot_guide_tokens")


def cell(base: RLConfig, guide: str, samples: int, top_k: int, out: Path) -> dict:
    d = base.model_dump(mode="json")
    d["guide"].update(config=guide, inline=None, task_rationales=False)
    d["reward"].update(kind="guide_logprob", samples=samples, guide_top_k=top_k)
    d["train"].update(eval=False, out_dir=str(out), log_every=1)
    t0 = time.time()
    run_rl(RLConfig.model_validate(d), progress=False, overwrite=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in KEYS}
    mean["actions"] = sum(mean[k] for k in KEYS[:3])
    mean["s_per_step"] = (time.time() - t0) / len(rows)
    return mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/rl_cpu_demo.yaml")
    ap.add_argument("--guide", default="configs/guides/task_guide_transformers.yaml")
    ap.add_argument("--samples", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--top-k", nargs="+", type=int, default=[0, 20])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = load_rl_config(args.config, [*args.set, f"train.steps={args.steps}"])
    head = ["samples", "top-k", "actions/step", "own / top-k / exact", "score calls", "queries", "guide tokens",
            "CoT tokens scored", "s/step"]
    lines = [head]
    for top_k in args.top_k:
        for g in args.samples:
            m = cell(base, args.guide, g, top_k, Path(base.train.out_dir) / f"guide_work_g{g}_k{top_k}")
            lines.append([str(g), str(top_k), f"{m['actions']:.0f}",
                          f"{m['reward_actions_own']:.0f} / {m['reward_actions_top_k']:.0f} / "
                          f"{m['reward_actions_exact']:.0f}", f"{m['reward_guide_calls']:.1f}",
                          f"{m['reward_guide_queries']:.0f}", f"{m['reward_guide_tokens']:.0f}",
                          f"{m['cot_guide_tokens']:.0f}", f"{m['s_per_step']:.1f}"])
            print(" ".join(lines[-1]), flush=True)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n" + "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Guide swapping: the same RL state tuning run once per guide, then one comparison table.

    python benchmarks/guide_swap.py --config configs/rl_cpu_demo.yaml \
        --guide smollm2=configs/guides/smollm2_transformers.yaml --guide rationales=task_rationales \
        --set guide.options.model=models/smollm2-135m-instruct --set train.steps=12

Each guide is a guide YAML or ``task_rationales`` (the task's own reference solutions, served by the dataset
backend). Everything else (model, data, reward, seed, steps) is shared. Runs go to ``OUT_DIR/<name>`` and use
Ray unless ``--single-process``. Columns: reward (first -> last logged window), held-out accuracy before ->
after, guide and learner throughput in RWKV tokens/s, and the time learners waited for the guide.
``guide.options`` overrides given with --set apply only to guides whose backend accepts them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.driver import run_rl


def guide_variant(cfg: RLConfig, name: str, spec: str) -> RLConfig:
    g = cfg.guide.model_dump()
    g.update(config=None, inline=None, task_rationales=False)
    if spec == "task_rationales":
        g.update(task_rationales=True, options={})
        g["resources"] = {**g["resources"], "num_cpus": None}
    else:
        g["config"] = spec
    train = cfg.train.model_copy(update={"out_dir": str(Path(cfg.train.out_dir) / name)})
    return RLConfig.model_validate({**cfg.model_dump(), "guide": g, "train": train.model_dump()})


def fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows: list[tuple[str, object]]) -> str:
    head = ["guide", "reward first -> last", "held-out acc before -> after", "guide tok/s", "learner tok/s",
            "learner waited s", "wall s"]
    lines = [head]
    for name, r in rows:
        lines.append([name, f"{fmt(r.reward_first, '.4f')} -> {fmt(r.reward_last, '.4f')}",
                      f"{fmt(r.acc_before)} -> {fmt(r.acc_after)}", fmt(r.guide_tokens_per_s, ".1f"),
                      fmt(r.learner_tokens_per_s, ".1f"), fmt(r.learner_wait_s, ".1f"), fmt(r.seconds, ".0f")])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/rl_cpu_demo.yaml")
    ap.add_argument("--guide", action="append", metavar="NAME=SPEC",
                    help="NAME=path/to/guide.yaml or NAME=task_rationales (repeat; default: smollm2 vs rationales)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--single-process", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    specs = args.guide or ["smollm2=configs/guides/smollm2_transformers.yaml", "rationales=task_rationales"]
    base = load_rl_config(args.config, args.set)
    rows = []
    for item in specs:
        name, sep, spec = item.partition("=")
        if not sep:
            ap.error(f"--guide {item!r} must look like NAME=SPEC")
        cfg = guide_variant(base, name, spec)
        res = run_rl(cfg, progress=False, ray=not args.single_process, overwrite=True)
        rows.append((name, res))
        print(f"[{name}] done: reward {res.reward_first:.4f} -> {res.reward_last:.4f}", flush=True)
    text = table(rows)
    print("\n" + text)
    out = Path(base.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guide_swap.txt").write_text(text + "\n")
    (out / "guide_swap.json").write_text(json.dumps({n: r.__dict__ for n, r in rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Guide swapping and tunable ablation under RL: the same run once per (guide, tunables, seed), one table.

    python benchmarks/guide_swap.py --config configs/rl_cpu_demo.yaml --seeds 0 1 \
        --guide rationales=task_rationales --guide task-guide=configs/guides/task_guide_vllm.yaml \
        --guide smollm2=configs/guides/smollm2_vllm_subprocess.yaml
    python benchmarks/guide_swap.py --guide rationales=task_rationales --tunables state upscaled upscaled+dbp \
        --supervised --seeds 0 1

Each guide is a guide YAML or ``task_rationales`` (the task's own reference solutions, served by the dataset
backend). ``--tunables`` picks among ``state`` (S0 only), ``upscaled`` (S0 + S~0 + R) and ``upscaled+dbp``;
by default the config's own. ``--supervised`` adds, per guide, a supervised ``tune`` run on that guide's CoTs
with the same step budget (the CoTs are collected once, then tuned on like task targets). Everything else
(model, data, reward, steps) is shared. Runs go to ``OUT_DIR/<name>`` (replaced if present) and use Ray
unless ``--single-process``. Columns, as mean over seeds (and the spread where > 1 seed): reward (first ->
last window), held-out accuracy before -> after, generated tokens per held-out answer, guide and learner
throughput in RWKV tokens/s, the mean depth of the learners' CoT queues (Ray), how long the learners waited for
the first batch (the guide's start-up), the share of the step loop they waited after it
(``driver.steady_idle_share``), and wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.driver import RLResult, run_rl, steady_idle_share

TUNABLES = {
    "state": {"upscale": {"enabled": False}, "dbp": {"enabled": False}},
    "upscaled": {"upscale": {"enabled": True}, "dbp": {"enabled": False}},
    "upscaled+dbp": {"upscale": {"enabled": True}, "dbp": {"enabled": True}},
}


def variant(cfg: RLConfig, name: str, spec: str, tunables: str | None, seed: int) -> RLConfig:
    d = cfg.model_dump(mode="json")
    g = d["guide"]
    g.update(config=None, inline=None, task_rationales=False)
    if spec == "task_rationales":
        g.update(task_rationales=True, options={})
        g["resources"] = {**g["resources"], "num_cpus": None}
    else:
        g["config"] = spec
    for section, values in (TUNABLES[tunables] if tunables else {}).items():
        d[section] = {**d[section], **values}
    d["train"] = {**d["train"], "seed": seed, "out_dir": str(Path(cfg.train.out_dir) / name)}
    return RLConfig.model_validate(d)


def supervised_on_cots(cfg: RLConfig, name: str) -> RLResult:
    """``tune`` on the guide's own CoTs (one pass of the guide over the training prompts), same budget."""
    import time

    from rl_statetune_guides import build_guide

    from rl_statetune.config import TuneConfig
    from rl_statetune.data import load_examples
    from rl_statetune.rl.cot import clean_guide_text, guide_prompt
    from rl_statetune.rl.guides import resolve_guide_config
    from rl_statetune.trainer import tune

    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, _ = load_examples(cfg.data)
    guide = build_guide(resolve_guide_config(cfg.guide, cfg.data, out))
    t0 = time.time()
    try:
        texts = guide.generate([guide_prompt(e.prompt, cfg.guide.cot) for e in train], cfg.guide.cot.max_tokens,
                               cfg.guide.cot.temperature)
    finally:
        guide.close()
    guide_s = time.time() - t0
    rows = [{"prompt": e.prompt, "target": cfg.guide.cot.join + clean_guide_text(t, cfg.guide.cot)
             + cfg.guide.cot.suffix, "answer": e.answer} for e, t in zip(train, texts)]
    (out / "cots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = cfg.model_dump(mode="json")
    tcfg = TuneConfig.model_validate({k: d[k] for k in ("model", "data", "optim", "upscale", "dbp")} | {
        "train": {**d["train"], "out_dir": str(out / "tune")}})
    res = tune(tcfg, progress=False, overwrite=True)
    return RLResult(str(out), res.steps, float("nan"), float("nan"), [], res.acc_before, res.acc_after,
                    float("nan"), float("nan"), guide_s, res.seconds + guide_s, tokens_before=res.tokens_before,
                    tokens_after=res.tokens_after)


def fmt(xs: list[float], spec: str = ".3f") -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "-"
    m = format(statistics.fmean(xs), spec)
    return m if len(xs) == 1 else f"{m} ± {format(statistics.pstdev(xs), spec)}"


def table(rows: list[tuple[str, list[RLResult]]]) -> str:
    head = ["run", "seeds", "reward first -> last", "held-out acc before -> after", "tokens/answer",
            "guide tok/s", "learner tok/s", "queue depth", "waited (first batch)", "idle after", "wall s"]
    lines = [head]
    for name, rs in rows:
        lines.append([name, str(len(rs)),
                      f"{fmt([r.reward_first for r in rs], '.4f')} -> {fmt([r.reward_last for r in rs], '.4f')}",
                      f"{fmt([r.acc_before for r in rs])} -> {fmt([r.acc_after for r in rs])}",
                      f"{fmt([r.tokens_before for r in rs], '.1f')} -> {fmt([r.tokens_after for r in rs], '.1f')}",
                      fmt([r.guide_tokens_per_s for r in rs], ".1f"), fmt([r.learner_tokens_per_s for r in rs], ".1f"),
                      fmt([r.queue_depth for r in rs], ".1f"), fmt([r.first_wait_s for r in rs], ".0f") + " s",
                      fmt([100 * steady_idle_share(r) for r in rs], ".1f") + " %",
                      fmt([r.seconds for r in rs], ".0f")])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/rl_cpu_demo.yaml")
    ap.add_argument("--guide", action="append", metavar="NAME=SPEC",
                    help="NAME=path/to/guide.yaml or NAME=task_rationales (repeat; default: the docstring's three)")
    ap.add_argument("--tunables", nargs="+", choices=list(TUNABLES), default=None,
                    help="tunable variants to compare under RL (default: the config's own)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--supervised", action="store_true", help="also supervised tune on each guide's CoTs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--single-process", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    specs = args.guide or ["rationales=task_rationales", "task-guide=configs/guides/task_guide_vllm.yaml",
                           "smollm2=configs/guides/smollm2_vllm_subprocess.yaml"]
    base = load_rl_config(args.config, args.set)
    rows: list[tuple[str, list[RLResult]]] = []
    for item in specs:
        gname, sep, spec = item.partition("=")
        if not sep:
            ap.error(f"--guide {item!r} must look like NAME=SPEC")
        for tun in args.tunables or [None]:
            name = gname if tun is None else f"{gname}/{tun}"
            results = []
            for seed in args.seeds:
                cfg = variant(base, f"{name.replace('/', '_')}_s{seed}", spec, tun, seed)
                results.append(run_rl(cfg, progress=False, ray=not args.single_process, overwrite=True))
                r = results[-1]
                print(f"[{name} seed {seed}] reward {r.reward_first:.4f} -> {r.reward_last:.4f}, held-out "
                      f"{r.acc_before:.3f} -> {r.acc_after:.3f}, {r.seconds:.0f} s", flush=True)
            rows.append((f"RL {name}", results))
        if args.supervised:
            results = [supervised_on_cots(variant(base, f"{gname}_tune_s{seed}", spec, None, seed), gname)
                       for seed in args.seeds]
            rows.append((f"tune on the {gname} CoTs", results))
    text = table(rows)
    print("\n" + text)
    out = Path(base.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guide_swap.md").write_text(text + "\n")
    (out / "guide_swap.json").write_text(json.dumps({n: [r.__dict__ for r in rs] for n, rs in rows}, indent=2,
                                                    default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

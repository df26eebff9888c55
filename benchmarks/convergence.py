"""Does decorrelated backpropagation speed up tuning? Steps to a target loss with and without DBP, over seeds.

Task: the capacity benchmark's key -> value facts (benchmarks/capacity.py) stored in an upscaled state; each
seed draws new facts and new support vectors. Both arms are identical except for the DBP update of R after each
optimiser step. Prints per-seed steps-to-target, mean +- std, the ratio no-DBP / DBP, and plots loss curves.

    python benchmarks/convergence.py                         # embedded model, K=64, rbf M=2N, 3 seeds
    python benchmarks/convergence.py --eta 1e-3 1e-2 --steps 150 --target 0.5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from capacity import fit, get_model, make_facts, make_tunable
from rl_statetune.config import OptimConfig


def steps_to(losses: list[float], target: float) -> int | None:
    """First step (1-based) whose loss is at or below the target; None if never."""
    return next((i + 1 for i, v in enumerate(losses) if v <= target), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--facts", type=int, default=64)
    ap.add_argument("--feature-map", default="rbf")
    ap.add_argument("--mult", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.5, help="target loss (nats)")
    ap.add_argument("--eta", type=float, nargs="+", default=[1e-3, 1e-2], help="DBP learning rates to try")
    ap.add_argument("--kappa", type=float, default=5e-3)
    ap.add_argument("--subsample", type=float, default=0.5)
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    model = get_model(args.model)
    M = args.mult * model.config.head_size
    optim = OptimConfig(lr=args.lr, lr_final=args.lr / 100)
    arms = [("no DBP", None)] + [(f"DBP eta={e:g}", (e, args.kappa, args.subsample)) for e in args.eta]
    curves: dict[str, list[list[float]]] = {name: [] for name, _ in arms}
    times: dict[str, list[float]] = {name: [] for name, _ in arms}
    for seed in args.seeds:
        idx, _ = make_facts(model, args.facts, seed)
        for name, dbp in arms:
            torch.manual_seed(seed)
            tun = make_tunable(model, args.feature_map, M, seed, idx)
            t0 = time.time()
            losses = fit(model, tun, idx, args.steps, optim, dbp=dbp)
            times[name].append(time.time() - t0)
            curves[name].append(losses)
            print(f"seed {seed}  {name:14s} steps-to-{args.target:g}: {steps_to(losses, args.target)}  "
                  f"final loss {losses[-1]:.4f}  {times[name][-1]:.1f}s", flush=True)

    def summary(name):
        hits = [steps_to(c, args.target) for c in curves[name]]
        ok = [h for h in hits if h is not None]
        mean = statistics.mean(ok) if ok else float("nan")
        std = statistics.stdev(ok) if len(ok) > 1 else 0.0
        return hits, mean, std

    base = summary("no DBP")[1]
    print(f"\nfacts K={args.facts}, {args.feature_map} M={M}, target loss {args.target}, {len(args.seeds)} seeds")
    print("| arm | steps to target (per seed) | mean +- std | speed-up vs no DBP | final loss (mean) | s/run |")
    print("|---|---|---|---|---|---|")
    result = {}
    for name, _ in arms:
        hits, mean, std = summary(name)
        final = statistics.mean(c[-1] for c in curves[name])
        ratio = base / mean if mean == mean and base == base else float("nan")
        print(f"| {name} | {', '.join('-' if h is None else str(h) for h in hits)} | {mean:.1f} +- {std:.1f} | "
              f"{ratio:.2f}x | {final:.4f} | {statistics.mean(times[name]):.1f} |")
        result[name] = {"steps_to_target": hits, "mean": mean, "std": std, "speedup": ratio, "final_loss": final}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convergence.json").write_text(json.dumps({"args": vars(args), "result": result, "curves": curves}))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for (name, _), color in zip(arms, ["k", "tab:orange", "tab:blue", "tab:green"]):
            for i, c in enumerate(curves[name]):
                ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.7, label=name if i == 0 else None)
        ax.axhline(args.target, ls="--", color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"DBP vs none: K={args.facts} facts, {args.feature_map} M={M}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "convergence.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

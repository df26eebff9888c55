"""Ablation on the embedded synthetic task: base / state / state+kernel / state+kernel+DBP.

Each arm runs the real trainer (``rl_statetune.trainer.tune``) on the same config (default: the quickstart's,
teach the "#### N" answer format) and is scored on the same held-out problems by greedy generation. Reports
held-out accuracy, final training loss, wall time and the size of the tuned artifact.

    python benchmarks/ablation.py                                  # configs/answer_format.yaml, M = 2N
    python benchmarks/ablation.py --set train.steps=30 --set data.eval_size=32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rl_statetune.config import load_config
from rl_statetune.data import load_examples
from rl_statetune.upscale import load_tunable
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.checkpoint import load_model
from rl_statetune.run.heldout import held_out_accuracy
from rl_statetune.trainer import tune


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/answer_format.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--feature-map", default="rbf")
    ap.add_argument("--mult", type=int, default=2, help="M = mult * head size")
    ap.add_argument("--dbp-eta", type=float, default=1e-2)
    ap.add_argument("--out", default="benchmarks/out/ablation")
    args = ap.parse_args(argv)
    base_cfg = load_config(args.config, overrides=args.set)
    model = load_model(base_cfg.model.path, base_cfg.model.dtype, backend=base_cfg.model.wkv_backend)
    N = model.config.head_size
    up = [f"upscale.feature_map={args.feature_map}", f"upscale.features={args.mult * N}"]
    arms = {
        "state": [],
        "state+kernel": ["upscale.enabled=true", *up],
        "state+kernel+DBP": ["upscale.enabled=true", *up, "dbp.enabled=true", f"dbp.eta={args.dbp_eta}"],
    }
    tok = WorldTokenizer()
    _, held = load_examples(base_cfg.data)
    fmt = base_cfg.data.target_format if base_cfg.data.task == "synthetic" else None
    rows = []
    t0 = time.time()
    acc = held_out_accuracy(model, tok, held, None, fmt, base_cfg.train.eval_max_new_tokens)
    rows.append({"arm": "base (frozen)", "accuracy": acc, "final_loss": None, "seconds": 0.0,
                 "state_values": 0, "file_kib": 0, "eval_seconds": round(time.time() - t0, 1)})
    print(f"base: held-out accuracy {acc:.3f}", flush=True)
    for arm, extra in arms.items():
        out = Path(args.out) / arm.replace("+", "_")
        if (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
        cfg = load_config(args.config, overrides=[*args.set, *extra, f"train.out_dir={out}"])
        res = tune(cfg, progress=False, evaluate=False)
        tunable = load_tunable(out / "state.safetensors", model.config)
        t1 = time.time()
        acc = held_out_accuracy(model, tok, held, tunable, fmt, cfg.train.eval_max_new_tokens)
        n = tunable.num_state_values() if hasattr(tunable, "num_state_values") else tunable.time_state.numel()
        rows.append({"arm": arm, "accuracy": acc, "final_loss": res.final_loss, "seconds": round(res.seconds, 1),
                     "state_values": n, "file_kib": round((out / "state.safetensors").stat().st_size / 1024, 1),
                     "eval_seconds": round(time.time() - t1, 1)})
        print(f"{arm}: held-out accuracy {acc:.3f}, final loss {res.final_loss:.4f}, {res.seconds:.0f}s", flush=True)
    print(f"\n{len(held)} held-out problems, {base_cfg.train.steps} steps, {args.feature_map} M={args.mult * N}")
    print("| arm | held-out accuracy | final train loss | tuning wall time (s) | tuned values | file (KiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        print(f"| {r['arm']} | {r['accuracy']:.3f} | {loss} | {r['seconds']} | {r['state_values']} | {r['file_kib']} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps(rows, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([r["arm"] for r in rows], [r["accuracy"] for r in rows], color=["gray", "k", "tab:blue", "tab:green"])
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0, 1)
        ax.set_title("ablation: synthetic task (embedded model)")
        fig.tight_layout()
        fig.savefig(Path(args.out) / "ablation.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

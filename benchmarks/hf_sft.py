"""Supervised state tuning: our loop (``rl_statetune.trainer.tune``) against TRL's ``SFTTrainer``
(``rl_statetune.hf.sft``), same config, one after the other in this process, printed as a table.

    OMP_NUM_THREADS=1 python benchmarks/hf_sft.py --config configs/answer_format.yaml [--seeds 0 1 2] [--fused]

``--fused`` adds TRL's stock loss (its fused LM head), which on CPU scores every position over the whole
vocabulary. Measure on an idle machine: other jobs on the cores change every speed figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/answer_format.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--fused", action="store_true", help="also run TRL's own fused-LM-head loss")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from rl_statetune.config import load_config
    from rl_statetune.hf.sft import sft_tune
    from rl_statetune.trainer import tune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            cfg = load_config(a.config, overrides=a.set + [f"train.seed={seed}", f"train.out_dir={tmp}/ours{seed}"])
            r = tune(cfg, progress=False)
            metrics = [json.loads(x) for x in (Path(tmp) / f"ours{seed}" / "metrics.jsonl").read_text().splitlines()]
            train_s = r.seconds  # tune() reports the whole run; its tokens/s is the loop's own
            rows.append(dict(path="ours (trainer.tune)", seed=seed, steps=r.steps, loss=r.final_loss,
                             acc_before=r.acc_before, acc_after=r.acc_after, tok_s=metrics[-1]["tokens_per_s"],
                             total_s=train_s))
            paths = ["targets"] + (["fused"] if a.fused else [])
            for lp in paths:
                res = sft_tune(cfg, f"{tmp}/trl-{lp}{seed}", loss_path=lp)
                rows.append(dict(path=f"TRL SFTTrainer ({lp} loss)", seed=seed, steps=res.steps, loss=res.final_loss,
                                 acc_before=res.acc_before, acc_after=res.acc_after, tok_s=res.tokens_per_s,
                                 total_s=res.seconds))
    print(f"\nconfig {a.config} {' '.join(a.set)}")
    print(f"{'path':28s} {'seed':>4s} {'steps':>5s} {'final loss':>10s} {'acc before':>10s} {'acc after':>9s} "
          f"{'train tok/s':>11s} {'run s':>6s}")
    for r in rows:
        print(f"{r['path']:28s} {r['seed']:4d} {r['steps']:5d} {r['loss']:10.4f} {r['acc_before']:10.3f} "
              f"{r['acc_after']:9.3f} {r['tok_s']:11.0f} {r['total_s']:6.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

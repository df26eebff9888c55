"""The full-run table of docs/eval.md: the embedded model, the embedded model + the quickstart state (every row of
the four tasks) and SmolLM2-135M-Instruct through lm-eval's ``hf`` model (subsets: on 2 CPU cores it runs at a
fraction of a request per second). ``--run`` runs ``rl-statetune eval`` for each block; without it the existing
``results.json`` files are tabulated.

    python benchmarks/eval_full_runs.py --run        # hours on 2 CPU cores
    python benchmarks/eval_full_runs.py              # table from runs/full-embedded, runs/table-*
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STATE = ["--state", "runs/answer_format/state.pth"]  # from: rl-statetune tune --config configs/answer_format.yaml
M_RWKV = ["--model", "embedded", *STATE, "--compare"]
M_HF = ["--model", "hf:models/smollm2-135m-instruct"]
BLOCKS = [  # (out dir, models, tasks, extra)
    ("runs/full-embedded", ["--model", "embedded"], "arc_challenge,winogrande,mmlu", ["--batch-size", "16"]),
    ("runs/full-state", ["--model", "embedded", *STATE], "arc_challenge,winogrande,mmlu", ["--batch-size", "16"]),
    ("runs/gsm8k-100", M_RWKV, "gsm8k", ["--limit", "100", "--batch-size", "16"]),
    ("runs/table-arc-wino", M_RWKV + M_HF, "arc_challenge,winogrande", ["--limit", "150"]),
    ("runs/table-mmlu", M_RWKV + M_HF, "mmlu", ["--limit", "3"]),
    ("runs/table-gsm8k", M_RWKV + M_HF, "gsm8k", ["--limit", "20"]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="store_true")
    args = ap.parse_args()
    if args.run:
        for out, models, tasks, extra in BLOCKS:
            subprocess.run([sys.executable, "-m", "rl_statetune.eval.cli", *models, "--tasks", tasks, *extra,
                            "--out", out, "--no-progress"], check=True)
    print("| block | run | task | metric | n | value ± stderr (%) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for out, _, _, _ in BLOCKS:
        path = Path(out) / "results.json"
        if not path.exists():
            continue
        for run, tasks in json.loads(path.read_text())["results"].items():
            for task, res in tasks.items():
                for m in [k for k in res if f"{k}_stderr" in res]:
                    print(f"| {Path(out).name} | {run} | {task} | {m} | {res['n']} | "
                          f"{100 * res[m]:.2f} ± {100 * res[m + '_stderr']:.2f} | {res['seconds']:.0f} |")


if __name__ == "__main__":
    main()

"""End-to-end wall time of ``rl-statetune eval``'s MMLU 5-shot task (model load, then ``cli.run_task``: lm-eval's
request building, scoring and bookkeeping) with the prefix cache off, on with fixed batches of ``--batch-size``
(the batching before block batches), and on with block batches (``harness.prefix_batches``). One JSON line per run.

    OMP_NUM_THREADS=1 python -P benchmarks/eval_mmlu_end_to_end.py --limit 2 --mode plain cache-fixed cache-blocks
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", default="2", help="questions per MMLU subject (57 subjects)")
    ap.add_argument("--mode", nargs="+", default=["plain", "cache-fixed", "cache-blocks"])
    ap.add_argument("--out", default="/tmp/eval_mmlu_end_to_end")
    a = ap.parse_args()
    from rl_statetune.eval import cli, harness

    blocks = harness.prefix_batches
    for mode in a.mode:
        harness.prefix_batches = blocks if mode != "cache-fixed" else (
            lambda c, n: [c[i:i + n] for i in range(0, len(c), n)])
        argv = ["--model", "embedded", "--tasks", "mmlu", "--limit", a.limit, "--num-fewshot", "5", "--out", a.out,
                "--no-progress"] + (["--no-prefix-cache"] if mode == "plain" else [])
        args = cli.add_eval_args(argparse.ArgumentParser()).parse_args(argv)
        t0 = time.perf_counter()
        lm = cli.make_lm("embedded", None, args, {})
        t1 = time.perf_counter()
        row, _ = cli.run_task(lm, "mmlu", args, cli.task_manager(args.data_dir))
        t2 = time.perf_counter()
        print(json.dumps({"mode": mode, "acc": row["acc"], "n": row["n"], "load_s": round(t1 - t0, 1),
                          "run_task_s": round(t2 - t1, 1), "forward_tokens": lm.stats["forward_tokens"],
                          "forwards": lm.stats["forwards"]}), flush=True)


if __name__ == "__main__":
    main()

"""End-to-end wall time of `rl-statetune eval`'s MMLU 5-shot task (model load + cli.run_task: request building, scoring,
lm-eval's bookkeeping) with the prefix cache off, on with fixed batches (the old batching), and on with block batches.

    OMP_NUM_THREADS=1 python -P benchmarks/eval_mmlu_end_to_end.py LIMIT 0|1 [fixed]
"""
import os, sys, time, json
os.environ["HF_DATASETS_OFFLINE"]="1"; os.environ["HF_HUB_OFFLINE"]="1"
os.environ.setdefault("RL_STATETUNE_SHARED_DATA", "/work/shared/data")
import argparse
import rl_statetune
from rl_statetune.eval import cli
from rl_statetune.eval.harness import RWKVStateLM
limit, cache = sys.argv[1], sys.argv[2] == "1"
if len(sys.argv) > 3 and sys.argv[3] == "fixed":
    import rl_statetune.eval.harness as H
    H.prefix_batches = lambda c, n: [c[i:i + n] for i in range(0, len(c), n)]
p = cli.add_eval_args(argparse.ArgumentParser())
args = p.parse_args(["--model", "embedded", "--tasks", "mmlu", "--limit", limit, "--num-fewshot", "5", "--out", os.environ.get("OUT", "/tmp/eval_mmlu_end_to_end"), "--no-progress"] + ([] if cache else ["--no-prefix-cache"]))
t0 = time.perf_counter()
lm = cli.make_lm("embedded", None, args, {})
t1 = time.perf_counter()
res = cli.run_task(lm, "mmlu", args, cli.task_manager())
t2 = time.perf_counter()
row = res[0]
print(json.dumps({"batches": sys.argv[3:] or ["blocks"], "cache": cache, "acc": row["acc"], "n": row["n"], "load_s": round(t1-t0,1), "run_task_s": round(t2-t1,1), "forward_tokens": lm.stats["forward_tokens"], "forwards": lm.stats["forwards"]}))

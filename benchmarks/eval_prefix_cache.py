"""Requests/s of the ``rl_statetune`` lm-eval model with and without the recurrent-state prefix cache, on lm-eval's
own ARC-Challenge (0-shot) and MMLU (5-shot, first_n few-shot: a subject's questions share the prefix) requests
from the local files. Checks that both ways give the same metrics. Measure on an idle machine.

    OMP_NUM_THREADS=2 python benchmarks/eval_prefix_cache.py --arc-limit 200 --mmlu-subjects 4 --mmlu-limit 25
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
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--state", default=None)
    ap.add_argument("--arc-limit", type=int, default=200)
    ap.add_argument("--mmlu-subjects", type=int, default=4)
    ap.add_argument("--mmlu-limit", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import lm_eval
    from rl_statetune.checkpoint import load_model
    from rl_statetune.eval.cli import task_config, task_manager
    from rl_statetune.eval.harness import RWKVStateLM, load_init_state, tokenizer_for

    model = load_model(args.model)
    init = load_init_state(model, args.state)
    tm = task_manager()
    mmlu = task_config("mmlu")
    mmlu["task"] = mmlu["task"][: args.mmlu_subjects]
    cases = [("arc_challenge 0-shot", task_config("arc_challenge"), args.arc_limit, None),
             (f"mmlu 5-shot ({args.mmlu_subjects} subjects)", mmlu, args.mmlu_limit, 5)]
    rows = []
    for name, cfg, limit, shots in cases:
        res = {}
        for cache in (False, True):
            lm = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), init_state_fn=init,
                             batch_size=args.batch_size, prefix_cache=cache)
            n_req = 0
            orig = lm._loglikelihood_tokens

            def counted(reqs, *a, _orig=orig, **k):
                nonlocal n_req
                n_req += len(reqs)
                t0 = time.perf_counter()
                out = _orig(reqs, *a, **k)
                counted.seconds += time.perf_counter() - t0
                return out

            counted.seconds = 0.0
            lm._loglikelihood_tokens = counted
            out = lm_eval.simple_evaluate(model=lm, tasks=[cfg], limit=limit, num_fewshot=shots, task_manager=tm,
                                          verbosity="ERROR")
            res[cache] = (out["results"], n_req, counted.seconds, lm.stats["forward_tokens"])
        same = res[True][0] == res[False][0]
        row = {"task": name, "requests": res[True][1], "same_metrics": same,
               "req_per_s_plain": round(res[False][1] / res[False][2], 1),
               "req_per_s_cache": round(res[True][1] / res[True][2], 1),
               "speedup": round(res[False][2] / res[True][2], 2),
               "tokens_plain": res[False][3], "tokens_cache": res[True][3]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| task | requests | req/s plain | req/s cache | speed-up | forward tokens plain → cache | same metrics |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['requests']} | {r['req_per_s_plain']} | {r['req_per_s_cache']} | {r['speedup']}x | "
              f"{r['tokens_plain']} → {r['tokens_cache']} | {r['same_metrics']} |")


if __name__ == "__main__":
    main()

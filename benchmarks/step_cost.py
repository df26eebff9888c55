"""What a state-tuning step costs at a real model shape: tokens/s and peak memory, float32 vs bfloat16 weights.

Rows (``--rows``): ``tune`` is ``trainer.target_loss`` forward + backward to S0 on B x T random tokens with the
loss on every position; ``rl`` is ``configs/rl_cpu_demo.yaml``'s ``Learner.train_step`` (match reward, G = 8,
GRPO, upscaled state and DBP) on about B x T tokens of its task's problems with their rationales as the CoT;
``rollout`` the same with ``reward.terms: {verifier: 1.0}``, G = 4 sampled answers of up to 48 tokens; ``eval``
the held-out generation, greedy, ``--eval-tokens`` new tokens (no stop string) for ``--eval-n`` problems in one
batch, its time per problem. Random weights of the named shape. Each (shape, row, dtype, threads) runs in its own process so that the peak
resident memory (VmHWM) is its own; "cpu s" is the process's CPU time for the same step (all its threads: on a
machine shared with other jobs, at one thread, closer to the idle machine's wall time than the wall time is); "imports" is the process before the model, "+ model" what loading it (from a bfloat16 file) added, "peak" the maximum over the
steps. On a machine shared with other jobs compare only rows of one run.

    python -P benchmarks/step_cost.py                   # 0.1B, tune / rl / eval, B=2 T=256, float32 and bfloat16
    python -P benchmarks/step_cost.py --shapes 0.1B --rows tune rl rollout eval --threads 1 2   # docs/speed.md
    python -P benchmarks/step_cost.py --shapes tiny --rows tune rl rollout eval --T 64 --steps 1 --eval-n 4 \
        --eval-tokens 8                                 # a quick check of the script (~1 min)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # RWKV-7 World: (layers, embd); head 64, vocab 65536, LoRA ranks of the released models
    "tiny": (2, 128, 8, 8, 8, 16),   # a quick check of the script, not a real model
    "0.1B": (12, 768, 64, 64, 32, 128),
    "0.4B": (24, 1024, 64, 64, 64, 128),
    "1.5B": (24, 2048, 96, 96, 64, 256),
}


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(shape: str):
    from rl_statetune.model import RWKV7Config

    L, C, dw, da, dv, dg = SHAPES[shape]
    return RWKV7Config(65536, C, L, 64, dw, da, dv, dg, 4 * C)


def write_model(shape: str, path: str) -> None:
    """Random weights of the shape, saved bfloat16 as real checkpoints are."""
    from rl_statetune.checkpoint import save_blinkdl
    from rl_statetune.init import init_rwkv7

    save_blinkdl(init_rwkv7(_config(shape), seed=0, noise=1.0), path)


DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "rl_cpu_demo.yaml")
ROLLOUT = ["reward.kind=null", "reward.terms={verifier: 1.0}", "reward.samples=4", "reward.max_new_tokens=48"]
ROWS = ("tune", "rl", "rollout", "eval")


def _demo_items(model, B: int, T: int, rollout: bool):
    """The demo's learner (reward, G, upscaled state, DBP) and about B * T tokens of its task's CoT items, the
    task's own rationales standing in for the guide's text (the demo's guide writes the same format)."""
    from rl_statetune.data import load_examples
    from rl_statetune.rl.config import load_rl_config
    from rl_statetune.rl.cot import make_items
    from rl_statetune.rl.learner import Learner
    from rl_statetune.run.setup import make_tunable
    from rl_statetune.tokenizer import WorldTokenizer

    cfg = load_rl_config(DEMO, ROLLOUT if rollout else [])
    train, held = load_examples(cfg.data)
    tok = WorldTokenizer()
    per_item = sum(len(tok.encode(e.prompt + e.target)) for e in train[:32]) / 32
    n = max(1, round(B * T / per_item))
    items = make_items(train[:n], [e.target.strip() for e in train[:n]], cfg.guide.cot)
    learner = Learner(model, tok, cfg, tunable=make_tunable(model, tok, train, cfg))
    return learner, items, cfg, tok, held


def one(path: str, dtype: str, B: int, T: int, steps: int, threads: int, device: str = "cpu",
        row: str = "tune", eval_n: int = 32, eval_tokens: int = 64) -> dict:
    import torch

    from rl_statetune.data import Batch
    from rl_statetune.checkpoint import load_model
    from rl_statetune.state import TimeState
    from rl_statetune.trainer import target_loss

    torch.set_num_threads(threads)
    base = _rss_mb()                                 # torch and the project imported
    model = load_model(path, dtype=dtype, device=device)
    cfg = model.config
    cuda = device.startswith("cuda")
    mem = (lambda: torch.cuda.max_memory_allocated() / 2**20) if cuda else _rss_mb  # noqa: E731
    rss_model = mem()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = {"row": row, "dtype": dtype, "threads": threads, "rss_base_mb": base, "rss_model_mb": rss_model}
    if row == "eval":                                # greedy, no stop string: every problem takes eval_tokens
        from rl_statetune.data import load_examples
        from rl_statetune.generation import generate
        from rl_statetune.rl.config import load_rl_config
        from rl_statetune.tokenizer import WorldTokenizer

        tok = WorldTokenizer()
        _, held = load_examples(load_rl_config(DEMO).data)
        prompts = [e.prompt for e in held[:eval_n]]
        generate(model, tok, prompts[:1], 2, stop=())   # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        outs = generate(model, tok, prompts, eval_tokens, stop=(), batch_size=len(prompts))
        sync()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_tok = sum(len(tok.encode(o)) for o in outs)   # re-encoded: about the tokens generated
        return {**out, "step_s": dt / len(prompts), "tokens": n_tok, "tokens_per_s": n_tok / dt,
                "cpu_s": cpu / len(prompts), "rss_peak_mb": mem()}
    if row in ("rl", "rollout"):
        learner, items, rl_cfg, _, _ = _demo_items(model, B, T, row == "rollout")
        rss_model = out["rss_model_mb"] = max(rss_model, mem())   # the tunable's support pass counts as setup

        def step(i: int) -> int:
            return learner.train_step(items, i, rl_cfg.train.steps)["tokens"]
    else:
        idx = torch.randint(0, 65536, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
        batch = Batch(idx=idx, lengths=torch.full((B,), T, device=device),
                      loss_mask=torch.ones(B, T - 1, dtype=torch.bool, device=device))
        state = TimeState(cfg).to(device)

        def step(i: int) -> int:
            target_loss(model, state, batch).backward()
            state.time_state.grad = None
            return B * T
    times, cpus, tokens = [], [], 0
    for i in range(steps + 1):                       # the first step warms up
        t0, c0 = time.perf_counter(), time.process_time()
        tokens = step(i)
        sync()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    cpu_s = sorted(cpus[1:])[len(cpus[1:]) // 2]
    return {**out, "tokens": tokens, "step_s": step_s, "tokens_per_s": tokens / step_s, "cpu_s": cpu_s,
            "rss_peak_mb": mem()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["0.1B"], choices=list(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--rows", nargs="+", default=["tune", "rl", "eval"], choices=ROWS,
                   help="tune: target_loss step; rl: the demo's Learner.train_step (match reward, G=8, GRPO); "
                        "rollout: the same with reward.terms {verifier: 1.0}, G=4 answers of <= 48 tokens; "
                        "eval: held-out greedy generation per problem")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=256, help="tune: B x T tokens; rl / rollout: items of about B x T")
    p.add_argument("--steps", type=int, default=2, help="timed steps (median) after one warm-up step")
    p.add_argument("--eval-n", type=int, default=32, help="held-out problems, one batch (the eval's batch size)")
    p.add_argument("--eval-tokens", type=int, default=64, help="new tokens per problem (the demo's eval cap)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--device", default="cpu", help="cuda: memory columns are torch's max allocated, not RSS")
    p.add_argument("--one", nargs=3, metavar=("CHECKPOINT", "DTYPE", "ROW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one[:2], args.B, args.T, args.steps, args.threads[0], args.device, args.one[2],
                             args.eval_n, args.eval_tokens)))
        return
    print(f"# tune: target_loss forward + backward to S0 on B={args.B} x T={args.T} random tokens; rl / rollout: "
          f"{DEMO.split('/')[-1]}'s Learner.train_step on its task's CoT items of about B x T tokens "
          f"(tokens: what the step reports); eval: greedy {args.eval_tokens} new tokens for {args.eval_n} problems "
          f"in one batch, 'step s' per problem; median of {args.steps} steps after a warm-up; random weights; "
          f"{args.device}")
    print(f"{'shape':6s} {'row':8s} {'dtype':9s} {'thr':>3s} {'tokens':>7s} {'tokens/s':>9s} {'step s':>8s} "
          f"{'cpu s':>8s} {'imports MB':>11s} {'+ model MB':>11s} {'peak MB':>8s}")
    import tempfile

    for shape in args.shapes:
        tmp = tempfile.TemporaryDirectory()
        path = f"{tmp.name}/{shape}.pth"
        write_model(shape, path)
        for row in args.rows:
            for dtype in args.dtypes:
                for threads in args.threads:
                    cmd = [sys.executable, "-P", __file__, "--one", path, dtype, row, "--B", str(args.B),
                           "--T", str(args.T), "--steps", str(args.steps), "--threads", str(threads),
                           "--device", args.device, "--eval-n", str(args.eval_n),
                           "--eval-tokens", str(args.eval_tokens)]
                    t0 = time.perf_counter()
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode != 0:
                        print(f"{shape:6s} {row:8s} {dtype:9s} {threads:3d} failed: "
                              f"{res.stderr.strip().splitlines()[-1:]}", flush=True)
                        continue
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    print(f"{shape:6s} {row:8s} {dtype:9s} {threads:3d} {r['tokens']:7d} {r['tokens_per_s']:9.1f} "
                          f"{r['step_s']:8.2f} {r['cpu_s']:8.2f} {r['rss_base_mb']:11.0f} {r['rss_model_mb'] - r['rss_base_mb']:11.0f} "
                          f"{r['rss_peak_mb']:8.0f}   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

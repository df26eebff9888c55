"""What a state-tuning step costs at a real model shape: tokens/s and peak memory, float32 vs bfloat16 weights.

A step is ``trainer.target_loss`` forward + backward to S0 (the tune step; an RL learner step is the same
teacher-forced forward/backward over the guide's tokens plus its reward terms) on B x T random tokens with the loss
on every position, random weights of the named shape. Each (shape, dtype) runs in its own process so that the peak
resident memory (VmHWM) is its own; "imports" is the process before the model, "+ model" what loading it (from a bfloat16 file) added, "peak" the maximum over the
steps. On a machine shared with other jobs compare only rows of one run.

    python benchmarks/step_cost.py                                   # 0.1B, B=2 T=256, float32 and bfloat16
    python benchmarks/step_cost.py --shapes 0.1B 0.4B --T 512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {  # RWKV-7 World: (layers, embd); head 64, vocab 65536, LoRA ranks of the released models
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


def one(path: str, dtype: str, B: int, T: int, steps: int, threads: int, device: str = "cpu") -> dict:
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
    idx = torch.randint(0, 65536, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    batch = Batch(idx=idx, lengths=torch.full((B,), T, device=device),
                  loss_mask=torch.ones(B, T - 1, dtype=torch.bool, device=device))
    state = TimeState(cfg).to(device)
    times = []
    for _ in range(steps + 1):                       # the first step warms up
        t0 = time.perf_counter()
        target_loss(model, state, batch).backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        state.time_state.grad = None
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    return {"dtype": dtype, "B": B, "T": T, "threads": threads, "step_s": step_s,
            "tokens_per_s": B * T / step_s, "rss_base_mb": base, "rss_model_mb": rss_model, "rss_peak_mb": mem()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["0.1B"], choices=list(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="timed steps (median) after one warm-up step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cuda: memory columns are torch's max allocated, not RSS")
    p.add_argument("--one", nargs=2, metavar=("CHECKPOINT", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one, args.B, args.T, args.steps, args.threads, args.device)))
        return
    print(f"# tune step = forward + backward to S0, B={args.B} T={args.T}, {args.threads} thread(s), "
          f"median of {args.steps} steps after a warm-up; random weights; {args.device}")
    print(f"{'shape':6s} {'dtype':9s} {'tokens/s':>9s} {'step s':>8s} {'imports MB':>11s} {'+ model MB':>11s} "
          f"{'peak MB':>8s}")
    import tempfile

    for shape in args.shapes:
        tmp = tempfile.TemporaryDirectory()
        path = f"{tmp.name}/{shape}.pth"
        write_model(shape, path)
        for dtype in args.dtypes:
            cmd = [sys.executable, "-P", __file__, "--one", path, dtype, "--B", str(args.B), "--T", str(args.T),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{shape:6s} {dtype:9s} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{shape:6s} {dtype:9s} {r['tokens_per_s']:9.1f} {r['step_s']:8.2f} {r['rss_base_mb']:11.0f} "
                  f"{r['rss_model_mb'] - r['rss_base_mb']:11.0f} {r['rss_peak_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()

"""``rl-statetune rl``: guide-driven RL state tuning, on Ray (default) or in one process."""

from __future__ import annotations

import argparse


def add_rl_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="RL YAML file, e.g. configs/rl_cpu_demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. train.steps=10 or reward.kind=reverse_kl")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    parser.add_argument("--single-process", action="store_true",
                        help="no Ray: guide and one learner alternate in this process")
    parser.add_argument("--no-progress", action="store_true")


def rl_main(args: argparse.Namespace) -> int:
    from rl_statetune.rl.config import load_rl_config

    cfg = load_rl_config(args.config, args.set)
    if args.single_process:
        from rl_statetune.rl.loop import run_rl

        res = run_rl(cfg, resume=args.resume, progress=not args.no_progress)
    else:
        from rl_statetune.rl.distributed import run_distributed

        res = run_distributed(cfg, resume=args.resume)
    print(f"\nstate written to {res.out_dir}/state.pth and state.safetensors")
    acc = (f"held-out accuracy {res.acc_before:.3f} -> {res.acc_after:.3f}" if cfg.train.eval
           else "held-out accuracy not evaluated (train.eval: false)")
    print(f"reward {res.reward_first:.4f} -> {res.reward_last:.4f} over {res.steps} steps; {acc}")
    print(f"guide {res.guide_tokens_per_s:.1f} tok/s, learner {res.learner_tokens_per_s:.1f} tok/s, "
          f"learner waited {res.learner_wait_s:.1f} s, {res.seconds:.0f} s in all")
    return 0

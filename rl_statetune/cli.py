"""``rl-statetune`` command line: tune, generate, eval, rl, init-support."""

from __future__ import annotations

import argparse
import logging
import sys


def _tune(args) -> int:
    from rl_statetune.config import load_config
    from rl_statetune.trainer import tune

    cfg = load_config(args.config, overrides=args.set)
    res = tune(cfg, resume=args.resume, progress=not args.no_progress, evaluate=not args.no_eval)
    print(f"\nstate written to {res.out_dir}/state.pth and state.safetensors")
    print(f"held-out accuracy: before {res.acc_before:.3f} -> after {res.acc_after:.3f}   "
          f"({res.steps} steps, final loss {res.final_loss:.4f}, {res.seconds:.0f} s)")
    return 0


def _generate(args) -> int:
    from rl_statetune.generation import generate
    from rl_statetune.state import initial_state_fn, load_state
    from rl_statetune.tokenizer import WorldTokenizer
    from rl_statetune.checkpoint import load_model

    model = load_model(args.model)
    tunable = load_state(args.state).to_module(model.config) if args.state else None
    stop = tuple(s.encode().decode("unicode_escape") for s in args.stop)
    outs = generate(model, WorldTokenizer(), args.prompt, args.max_new_tokens,
                    init_state=initial_state_fn(model, tunable), stop=stop, temperature=args.temperature)
    for p, o in zip(args.prompt, outs):
        print(p + o)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rl-statetune", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tune", help="tune an initial state on a task (supervised targets)")
    t.add_argument("--config", required=True, help="YAML file, e.g. configs/quickstart.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=10")
    t.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out accuracy before/after")
    t.set_defaults(fn=_tune)

    g = sub.add_parser("generate", help="complete prompts with a model and optional tuned state")
    g.add_argument("--model", default="embedded")
    g.add_argument("--state", default=None, help="state file (.pth or .safetensors)")
    g.add_argument("--prompt", action="append", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--stop", action="append", default=["\\n\\n"], help="stop string (escapes allowed)")
    g.set_defaults(fn=_generate)

    from rl_statetune.eval.cli import add_eval_args, eval_main
    from rl_statetune.rl.cli import add_rl_args, rl_main
    from rl_statetune.support import add_init_support_args, init_support_main

    e = sub.add_parser("eval", help="MMLU / GSM8K / WinoGrande / ARC-C, base model vs tuned states")
    add_eval_args(e)
    e.set_defaults(fn=eval_main)

    r = sub.add_parser("rl", help="guide-driven RL state tuning (on Ray unless --single-process)")
    add_rl_args(r)
    r.set_defaults(fn=rl_main)

    s = sub.add_parser("init-support", help="choose kernel support vectors on task data (upscaled state)")
    add_init_support_args(s)
    s.set_defaults(fn=init_support_main)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args) or 0
    except (FileNotFoundError, ValueError) as e:
        print(f"rl-statetune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

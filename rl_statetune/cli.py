"""``rl-statetune``: one command line for tune, rl, eval, generate and init-support.

Bad input (a missing or malformed file, a bad config key or value, a run folder in the way) ends in one line
``rl-statetune CMD: error: ...`` and exit code 2, never a traceback (``--debug`` shows it). SIGINT / SIGTERM
during ``tune`` / ``rl`` checkpoint after the current step and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

DTYPES = ("float32", "bfloat16", "float16")  # model weights (rl_statetune.checkpoint.load_model)


def _run_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", required=True, help=f"YAML file, e.g. {example}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.steps=10 (repeatable)")
    grp = p.add_mutually_exclusive_group()
    grp.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    grp.add_argument("--overwrite", action="store_true", help="replace the run already in OUT_DIR")
    p.add_argument("--no-progress", action="store_true")


def _tune(args) -> int:
    from rl_statetune.config import load_config
    from rl_statetune.trainer import tune

    cfg = load_config(args.config, overrides=args.set)
    res = tune(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
               evaluate=not args.no_eval)
    print(_artefact(res.out_dir, res.already_finished, cfg.upscale.enabled))
    loss = f"final loss {res.final_loss:.4f}"
    if res.skipped_steps:
        loss += f" (the last finite step's; {res.skipped_steps} of {res.steps} steps skipped as non-finite)"
    if math.isnan(res.acc_after):
        print(f"held-out accuracy: not evaluated   ({res.steps} steps, {loss}, {res.seconds:.0f} s)")
    else:
        print(f"held-out accuracy: before {res.acc_before:.3f} -> after {res.acc_after:.3f}   generated tokens per "
              f"answer: {res.tokens_before:.1f} -> {res.tokens_after:.1f}\n({res.steps} steps, {loss}; "
              f"tuning {res.tuning_seconds:.0f} s, {res.seconds:.0f} s in all)")
    return 0


def _artefact(out_dir: str, already_finished: bool, upscaled: bool) -> str:
    """Which file of the run folder carries what (an upscaled run's state.pth holds S0 only)."""
    if already_finished:
        head = f"\n{out_dir} holds a finished run: nothing was written; its state is in {out_dir}/state.safetensors"
    else:
        head = f"\nstate written to {out_dir}/state.pth and state.safetensors"
    if not upscaled:
        return head
    return (f"{head}\n{out_dir}/state.safetensors carries the whole upscaled state (S0, S~0, R, feature bases): "
            f"use it with rl-statetune generate / eval. {out_dir}/state.pth holds S0 ONLY (the RWKV runtimes' "
            "format): loaded there it is not this run's model")


def _rl(args) -> int:
    from rl_statetune.rl.config import load_rl_config
    from rl_statetune.rl.driver import run_rl, summary

    cfg = load_rl_config(args.config, args.set)
    res = run_rl(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, ray=args.ray)
    print(_artefact(res.out_dir, res.already_finished, cfg.upscale.enabled))
    print(summary(res, cfg.train.eval))
    return 0


def _positive_or_zero(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0 (0 = greedy)")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def _escapes(text: str) -> str:
    """``\\n``, ``\\t`` ... in a command-line string, leaving every other character (non-ASCII too) as typed."""
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")


def _generate(args) -> int:
    from rl_statetune.checkpoint import load_model
    from rl_statetune.generation import generate
    from rl_statetune.lm import NonFiniteLogits
    from rl_statetune.state import initial_state_fn
    from rl_statetune.tokenizer import WorldTokenizer
    from rl_statetune.upscale import load_tunable

    model = load_model(args.model, dtype=args.dtype)
    tunable = load_tunable(args.state, model.config) if args.state else None
    try:
        outs = generate(model, WorldTokenizer(), args.prompt, args.max_new_tokens,
                        init_state=initial_state_fn(model, tunable), stop=tuple(_escapes(s) for s in args.stop),
                        temperature=args.temperature)
    except NonFiniteLogits as e:
        culprit = f"--state {args.state}" if args.state else f"--model {args.model}"
        raise NonFiniteLogits(f"{culprit}: {e}; nothing generated") from None
    for p, o in zip(args.prompt, outs):
        print(p + o)
    return 0


def _init_support(args) -> int:
    """Choose support vectors / bases on the task data and save them (set upscale.support_path to the file)."""
    from rl_statetune.config import load_config
    from rl_statetune.run.setup import start_run
    from rl_statetune.support import save_support, support_from_config

    cfg = load_config(args.config, overrides=args.set)
    model, tok, train, _ = start_run(cfg)
    up = cfg.upscale.model_copy(update={"support_path": None})
    maps = support_from_config(model, tok, [e.prompt + e.target for e in train], up, cfg.train.seed,
                               up.support_texts)
    path = save_support(args.out, maps)
    print(f"{up.feature_map} support, M={maps[0].dim}, {len(maps)} layers, gamma "
          f"{[round(float(m.gamma.mean()), 3) for m in maps]} -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rl-statetune", description=__doc__.split("\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tune", help="tune an initial state on a task (supervised targets)")
    _run_args(t, "configs/quickstart.yaml")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out accuracy before/after")
    t.set_defaults(fn=_tune)

    r = sub.add_parser("rl", help="guide-driven RL state tuning (in this process, or on Ray with --ray)")
    _run_args(r, "configs/rl_cpu_demo.yaml")
    r.add_argument("--ray", action="store_true", help="guide actors + distributed.num_learners learners on Ray")
    r.set_defaults(fn=_rl)

    from rl_statetune.eval.cli import add_eval_args, eval_main

    e = sub.add_parser("eval", help="MMLU / GSM8K / WinoGrande / ARC-C, base model vs tuned states")
    add_eval_args(e)
    e.set_defaults(fn=eval_main)

    g = sub.add_parser("generate", help="complete prompts with a model and optional tuned state")
    g.add_argument("--model", default="embedded")
    g.add_argument("--state", default=None, help="state file (.pth or .safetensors)")
    g.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="model weights' dtype (states and the WKV recurrence stay float32)")
    g.add_argument("--prompt", action="append", required=True)
    g.add_argument("--max-new-tokens", type=_positive_int, default=64)
    g.add_argument("--temperature", type=_positive_or_zero, default=0.0, help="0 = greedy (default)")
    g.add_argument("--stop", action="append", default=["\\n\\n"], help="stop string (\\n, \\t escapes allowed)")
    g.set_defaults(fn=_generate)

    s = sub.add_parser("init-support", help="choose kernel support vectors on task data (upscaled state)")
    s.add_argument("--config", required=True, help="tuning YAML (model, data and upscale sections are used)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out", required=True, help="output .safetensors (set upscale.support_path to it)")
    s.set_defaults(fn=_init_support)
    return ap


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad environment, not a bug: one line, exit 2."""
    from rl_statetune.rl.ray_executor import ResourceError, WorkerDied

    errors: tuple[type[BaseException], ...] = (ValueError, OSError, ResourceError, WorkerDied)
    try:
        from rl_statetune_guides import GuideError

        errors += (GuideError,)
    except ImportError:  # pragma: no cover - the guides package ships with this one
        pass
    return errors


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rl_statetune.malloc import keep_freed_memory

    keep_freed_memory()     # CPU steps reuse the pages they free instead of faulting them in again
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rl_statetune.run.folder import Interrupted

    try:
        return args.fn(args) or 0
    except Interrupted as e:
        print(f"rl-statetune {args.command}: stopped by {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"rl-statetune {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) if "\n" not in str(e).strip() else str(e).strip()
        print(f"rl-statetune {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

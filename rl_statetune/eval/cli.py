"""``rl-statetune eval``: a thin front end over lm-evaluation-harness.

    rl-statetune eval --model embedded [--state S1.pth --state S2.pth] [--model hf:models/smollm2-135m-instruct] \\
        --tasks arc_challenge,mmlu,winogrande,gsm8k --limit 100 --out DIR [--compare]

Each RWKV-7 ``--model`` is evaluated with its own initial state ("base", without ``--state`` or with
``--compare``) and with every ``--state``; an ``hf:<folder>`` model (a guide) runs through lm-eval's own ``hf`` model,
so both land in one table. Scoring, prompts and metrics are lm-eval's (``rl_statetune/eval/tasks/*.yaml``); every
benchmark row is validated before the first score, and each finished (run, task) is written to ``DIR`` at once:
lm-eval's own output (``DIR/lm_eval/<run>/results_<date>.json`` and ``samples_<task>_<date>.jsonl``, written by its
``EvaluationTracker`` as ``lm_eval --output_path DIR/lm_eval --log_samples`` writes them) and, across runs,
``results.json`` / ``results.md`` (the before/after table, then lm-eval's ``make_table`` of each run) /
``accuracy.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from rl_statetune.eval.tasks.local_data import ENV, SPLITS, benchmark_file, data_root, read_rows
from rl_statetune.lm import NonFiniteLogits

BASE = "base"
TASK_DIR = Path(__file__).parent / "tasks"


class Spec:
    def __init__(self, yaml: str, name: str, metrics: tuple[str, ...], benchmark: str):
        self.yaml, self.name, self.metrics, self.benchmark = yaml, name, metrics, benchmark


# our task name -> the local task YAML, the lm-eval result to report (task or group), its metrics (primary first)
TASKS = {
    "arc_challenge": Spec("arc_challenge_local.yaml", "arc_challenge", ("acc_norm,none", "acc,none"), "arc_challenge"),
    "mmlu": Spec("mmlu_local.yaml", "mmlu_local", ("acc,none",), "mmlu"),
    "winogrande": Spec("winogrande_local.yaml", "winogrande", ("acc,none",), "winogrande"),
    "gsm8k": Spec("gsm8k_local.yaml", "gsm8k", ("exact_match,strict-match", "exact_match,flexible-extract"), "gsm8k"),
}


def _count(minimum: int):
    """An argparse type: a whole number >= ``minimum``, checked before anything is loaded."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return v
    return parse


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, action="append", metavar="PATH",
                        help="RWKV-7 checkpoint (embedded / .pth / .safetensors / fla folder), or hf:<folder> for a "
                             "Hugging Face causal LM (e.g. the guide); repeatable")
    parser.add_argument("--state", action="append", default=[], metavar="PATH",
                        help="tuned (or upscaled) state file for the RWKV-7 model(s); repeatable, named by file stem")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--limit", type=_count(1), default=None,
                        help="score at most N docs per lm-eval task (MMLU: per subject, as lm-eval does)")
    parser.add_argument("--num-fewshot", type=_count(0), default=None, help="default: lm-eval's (gsm8k 5, others 0)")
    parser.add_argument("--batch-size", type=_count(1), default=8)
    parser.add_argument("--max-new-tokens", type=_count(1), default=None, help="generation budget (default lm-eval's, 256)")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (lm-eval's default 1234)")
    parser.add_argument("--data-dir", default=None, help=f"data root holding benchmarks/ (default ${ENV} or ../shared/data)")
    parser.add_argument("--out", required=True, help="output directory for results.json/.md/.png and samples")
    parser.add_argument("--compare", action="store_true", help="also run the base state and report deltas")
    parser.add_argument("--no-prefix-cache", action="store_true", help="RWKV: run every request from scratch")
    parser.add_argument("--apply-chat-template", action="store_true",
                        help="lm-eval's --apply_chat_template (RWKV: 'User: ...\\n\\nAssistant:'; hf: the model's own)")
    parser.add_argument("--fewshot-as-multiturn", action="store_true",
                        help="lm-eval's --fewshot_as_multiturn (needs --apply-chat-template)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="RWKV-7 weights' dtype (states and the WKV recurrence stay float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (lm-eval's too)")
    return parser


def parse_tasks(tasks: str) -> list[str]:
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty; give one or more of " + ", ".join(TASKS))
    for n in names:
        if n not in TASKS:
            raise ValueError(f"unknown eval task {n!r} in --tasks; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def validate_data(tasks: list[str], data_dir: str | None) -> dict[str, str]:
    """Read and check every row of every file the tasks use, before anything is scored."""
    sources = {}
    for t in tasks:
        b = TASKS[t].benchmark
        for split in SPLITS[b]:
            read_rows(benchmark_file(b, split, data_dir), b)
        sources[t] = str(data_root(data_dir) / "benchmarks" / b)
    return sources


def _stem_names(paths: list[str], taken: set[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        stem, n = Path(p).stem, 2
        name = stem
        while name in names or name in taken:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def plan_runs(models: list[str], states: list[str], compare: bool) -> list[tuple[str, str, str | None]]:
    """[(run name, model, state or None)] in evaluation order."""
    rwkv = [m for m in models if not m.startswith("hf:")]
    hf = [m for m in models if m.startswith("hf:")]
    if states and not rwkv:
        raise ValueError("--state needs an RWKV-7 --model (hf: models have no recurrent state)")
    plan = []
    for m in rwkv:
        prefix = "" if len(rwkv) == 1 else f"{Path(m).stem}/"
        if not states or compare:
            plan.append((f"{prefix}{BASE}", m, None))
        for name, s in zip(_stem_names(states, {BASE}), states):
            plan.append((f"{prefix}{name}", m, s))
    for m in hf:
        folder = m[3:]
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--model {m}: no Hugging Face model folder at {folder} (build the SmolLM2 guide "
                                    "with scripts/make_smollm2_guide.py --out models/smollm2-135m-instruct)")
        plan.append((f"hf:{Path(folder).name}", m, None))
    return plan


def make_lm(model: str, state: str | None, args: argparse.Namespace, cache: dict) -> Any:
    """An lm-eval model object; RWKV models are loaded once and shared by their states' runs."""
    if model.startswith("hf:"):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model[3:], dtype="float32", device=args.device, batch_size=args.batch_size)
    from rl_statetune.eval.harness import RWKVStateLM, load_init_state, tokenizer_for

    if model not in cache:
        from rl_statetune.checkpoint import load_model

        m = load_model(model, dtype=args.dtype, device=args.device)
        cache[model] = (m, tokenizer_for(m))
    m, tok = cache[model]
    return RWKVStateLM(pretrained=model, state=state, batch_size=args.batch_size, model=m, tokenizer=tok,
                       init_state_fn=load_init_state(m, state, args.device), prefix_cache=not args.no_prefix_cache,
                       progress=not args.no_progress, max_gen_toks=args.max_new_tokens or 256)


def task_config(task: str, data_dir: str | None = None, keep: set[str] | None = None) -> dict:
    """The local task YAML as an inline lm-eval config (``keep``: only these lm-eval subtasks). Inline configs
    cannot carry a group's ``aggregate_metric_list`` in lm-eval 0.4.13 (it leaks into the subtasks), so it is
    dropped here; load by name (``task_manager(...)`` + ``TASKS[t].name``) to get lm-eval's MMLU aggregate."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(TASK_DIR / TASKS[task].yaml, resolve_func=True)
    cfg.pop("aggregate_metric_list", None)
    cfg.pop("metadata", None)
    if keep is not None:
        cfg["task"] = [t for t in cfg["task"] if t["task"] in keep]
    for item in cfg["task"]:
        if data_dir is not None:
            item["metadata"] = {**item.get("metadata", {}), "data_dir": str(data_dir)}
    return cfg


def task_manager(data_dir: str | None = None):
    """lm-eval's TaskManager with the local task YAMLs registered (``*_local`` names). Only the folders of the four
    lm-eval task families are indexed (indexing all of lm-eval's tasks takes ~8 s per TaskManager)."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    lm_tasks = Path(lm_eval.tasks.__file__).parent
    paths = [lm_tasks / "arc", lm_tasks / "mmlu" / "default", lm_tasks / "winogrande", lm_tasks / "gsm8k", TASK_DIR]
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=False,
                       metadata={"data_dir": str(data_dir)} if data_dir else None)


def summarize(task: str, out: dict, seconds: float) -> dict:
    """lm-eval's result dict -> {metric: value, metric_stderr, n, num_fewshot, primary_metric, seconds}."""
    spec = TASKS[task]
    res = out.get("groups", {}).get(spec.name) or out["results"][spec.name]
    row: dict[str, Any] = {}
    for key in spec.metrics:
        metric, _, filt = key.partition(",")
        name = metric if filt == "none" else key
        row[name] = float(res[key])
        stderr = res.get(f"{metric}_stderr,{filt}")
        row[f"{name}_stderr"] = float("nan") if stderr in (None, "N/A") else float(stderr)
    leaves = [t for t in out["n-samples"]]
    row["n"] = int(sum(out["n-samples"][t]["effective"] for t in leaves))
    shots = {v for k, v in out.get("n-shot", {}).items() if k in leaves}
    row["num_fewshot"] = shots.pop() if len(shots) == 1 else sorted(shots)
    row["primary_metric"] = next(iter(k for k in row))
    row["seconds"] = round(seconds, 2)
    return row


def run_task(lm: Any, task: str, args: argparse.Namespace, task_manager: Any,
             tracker: Any = None) -> tuple[dict, str]:
    """lm-eval on one task -> (our summary row, lm-eval's ``make_table``); with ``tracker`` (an
    ``EvaluationTracker``) lm-eval's results json and samples jsonl are written, as its CLI writes them."""
    import lm_eval
    from lm_eval.utils import make_table

    if args.fewshot_as_multiturn and not args.apply_chat_template:
        raise ValueError("--fewshot-as-multiturn needs --apply-chat-template")
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[Path(TASKS[task].yaml).stem], limit=args.limit, num_fewshot=args.num_fewshot,
        task_manager=task_manager, log_samples=True, verbosity="ERROR", evaluation_tracker=tracker,
        apply_chat_template=args.apply_chat_template, fewshot_as_multiturn=args.fewshot_as_multiturn,
        gen_kwargs=f"max_gen_toks={args.max_new_tokens}" if args.max_new_tokens else None,
        random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=args.seed)
    row = summarize(task, out, time.perf_counter() - t0)
    table = make_table(out) + (make_table(out, "groups") if out.get("groups") else "")
    if tracker is not None:
        samples = out.pop("samples")
        tracker.save_results_aggregated(results=out, samples=samples)
        for name in out["configs"]:
            tracker.save_results_samples(task_name=name, samples=samples[name])
    return row, table


def lm_eval_tracker(out_dir: str | Path, run: str):
    """lm-eval's ``EvaluationTracker`` writing under ``out_dir/lm_eval/<run>/`` (lm-eval names the folder after
    ``pretrained=``; a model object has none, so the run's name is used)."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(Path(out_dir) / "lm_eval"))
    log = tracker.general_config_tracker.log_experiment_args

    def named(*a, **kw):
        log(*a, **kw)
        g = tracker.general_config_tracker
        g.model_name, g.model_name_sanitized = run, "".join(c if c.isalnum() or c in "-_." else "__" for c in run)

    tracker.general_config_tracker.log_experiment_args = named
    return tracker


def eval_main(args: argparse.Namespace) -> int:
    with _no_progress_bars(args.no_progress):   # lm-eval's own bars (contexts, requests) have no switch of their own
        return _eval(args)


def _eval(args: argparse.Namespace) -> int:
    import os

    from rl_statetune.eval.report import write_report

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder (results.json, results.md, accuracy.png and "
                         "samples/ are written into it)")
    tasks = parse_tasks(args.tasks)
    plan = plan_runs(args.model, args.state, args.compare)
    sources = validate_data(tasks, args.data_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)   # before scoring: a folder that cannot be made loses nothing
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    _quiet_git_hash()
    tm = task_manager(args.data_dir)
    runs: dict[str, dict] = {}
    base = BASE if args.compare and args.state and any(n == BASE for n, _, _ in plan) else None
    extra = {"models": args.model, "states": dict(zip(_stem_names(args.state, {BASE}), args.state)),
             "data": sources, "lm_eval": _lm_eval_version()}
    cache: dict = {}
    paths = None
    for name, model, state in plan:
        lm = make_lm(model, state, args, cache)
        runs[name] = {"results": {}, "tables": {},
                      "config": {"tasks": tasks, "limit": args.limit, "num_fewshot": args.num_fewshot,
                                 "batch_size": args.batch_size, "seed": args.seed, "model": model, "state": state,
                                 "apply_chat_template": args.apply_chat_template}}
        tracker = lm_eval_tracker(args.out, name)
        for task in tasks:
            print(f"[eval] {name}: {task}", file=sys.stderr)
            try:
                row, table = run_task(lm, task, args, tm, tracker)
            except NonFiniteLogits as e:
                raise NonFiniteLogits(f"{'--state ' + state if state else '--model ' + model}: {e} in {task}; "
                                      "its scores would be meaningless") from None
            row["source"] = sources[task]
            runs[name]["results"][task] = row
            runs[name]["tables"][task] = table
            paths = write_report(args.out, runs, base=base if base in runs else None, extra_config=extra)
    print(paths["markdown"].read_text())
    print(json.dumps({k: str(v) for k, v in paths.items()}), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _no_progress_bars(on: bool):
    """While ``on``: every tqdm bar off (lm-eval's too; ``TQDM_DISABLE=1`` reaches only tqdm imported after it is
    set), restored on the way out so the rest of the process keeps its bars."""
    if not on:
        yield
        return
    import os
    from functools import partialmethod

    import tqdm.std

    init, env = tqdm.std.tqdm.__init__, os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    tqdm.std.tqdm.__init__ = partialmethod(init, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = init
        if env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env


def _quiet_git_hash() -> None:
    """lm-eval records ``git describe`` of the working directory; outside a git checkout git prints ``fatal: not a
    git repository`` to the terminal. Ask git the same with its stderr closed (None outside a checkout)."""
    import subprocess

    import lm_eval.evaluator

    def git_hash() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return None

    lm_eval.evaluator.get_git_commit_hash = git_hash


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m rl_statetune.eval.cli``): bad input -> one line, exit 2."""
    parser = add_eval_args(argparse.ArgumentParser(prog="rl-statetune eval", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return eval_main(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"rl-statetune eval: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())

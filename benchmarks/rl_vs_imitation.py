#!/usr/bin/env python
"""Guided RL against imitation on the reasoning task (embedded:reason), every row scored on FRESH held-out problems.

    python benchmarks/rl_vs_imitation.py --config configs/rl_quick.yaml --seeds 0 1 2 --steps 10 \
        --set train.batch_size=4
    python benchmarks/rl_vs_imitation.py --table benchmarks/out/rl_vs_imitation.json     # the table again

Rows (same base config, same step budget and batch size; only the reward / guide / tuner differ):

* ``frozen``: the frozen model, no header;  ``frozen+header``: the frozen model prompted with ``Mode: reason``;
* ``tune-rationales``: supervised ``tune`` on the task's rationales (teacher forcing);
* ``tune-self``: supervised ``tune`` on the self-guide's CoTs (the frozen model with its header writes one greedy
  CoT per training prompt, as the RL rows' self-guide does): imitation of the same guide the ``*-self`` rows use;
* ``lora-matched`` / ``lora-usual``: PEFT LoRA on the same rationales with TRL's SFTTrainer (``hf.sft.sft_tune``,
  lr 1e-2 -> 1e-4), at the state's trainable-parameter count (r 8 on the attention projections of
  ``embedded:reason``) and at a usual rank (r 16 on every linear layer); scored with the adapter merged;
* ``grpo-verifier``: GRPO on the learner's own answers, the task's verifier only, no guide;
* ``match-rationales``: guided RL as before this script, token match on the rationales' CoTs;
* ``match-self``: token match on the self-guide's CoTs (the frozen model with its header writes them, greedy);
* ``rejection-self``: the same, guide CoTs with a wrong final answer dropped (``guide.cot.verify``);
* ``on-policy-self``: the learner's own answers scored by the self-guide (per-token reverse KL);
* ``on-policy+verifier``: the same plus the verifier term;
* ``rejection-self+verifier``: rejection-filtered self-guide CoTs (match) plus the verifier (``rl_quick.yaml``);
* ``grpo+guide-self`` / ``grpo+guide-rationales``: GRPO with the verifier, the guide's CoT one more member of each
  group (``reward.guide_in_group``; mixed-policy GRPO): no imitation term;
* ``match-smollm2`` / ``grpo+guide-smollm2``: SmolLM2-135M-Instruct as the guide (``configs/guides/
  smollm2_transformers.yaml``, in this process), with the old match reward and with the guide in the group;
* ``grpo+prefix-smollm2``: SmolLM2 shown three solved problems (so it writes the task's format, with wrong
  sums), only the first fifth of its CoT in the group and the learner writing the rest (``reward.guide_prefix``);
  ``tune-smollm2``: supervised ``tune`` on the same prompted SmolLM2's greedy CoTs (imitation of that guide);
* ``grpo+guide-taskguide`` / ``grpo+prefix-taskguide`` / ``tune-taskguide``: the same three with the project's task
  guide (``scripts/make_task_guide.py``, a 7.3M-parameter transformers model trained on the task; right on ~37%
  of the problems), its whole CoT or its first fifth in the group, or imitated;
* ``grpo+steps`` / ``grpo+steps+guide-self`` / ``-rationales`` / ``-taskguide``: the verifier plus the task's step
  check (``reward.terms: {verifier: 1.0, steps: 1.0}``, ``rl.steps``), with no guide or that guide in the group;
* ``grpo+fix+guide-self`` / ``-rationales`` / ``-taskguide``: the same plus the task's corrections (``corrections:
  50.0``, a right value's token weighing as 50 answer tokens): at each wrong equation of the learner's own answers,
  the right value is taught after its own prefix.

Held-out problems: ``--fresh-size`` problems from data seed ``--fresh-seed`` (never used in training: training
uses ``data.seed``, the run's own held-out ``data.seed + 1``), prompted with no header, greedy to the end of the
line, scored by the task's rule. Columns: accuracy mean +- sd over seeds, generated tokens per answer, guide tokens
used per run (RWKV tokens of guide text written for CoTs plus guide tokens in the reward's score calls), wall
time per run (tuning; the fresh evaluation not included). Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.config import TuneConfig
from rl_statetune.data import Example, load_examples
from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.cot import clean_guide_text, guide_prompt, make_items
from rl_statetune.rl.driver import make_local_guide, run_rl
from rl_statetune.run.heldout import held_out
from rl_statetune.synthetic import mode_header, reasoning_problems
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.trainer import tune
from rl_statetune.upscale import load_tunable

SELF = {"self_guide": {"header": "Mode: reason\n"}}
RATIONALES = {"task_rationales": True}
# a real instruction model, weak at the task (build: python scripts/make_smollm2_guide.py --out models/...)
SMOLLM2 = {"config": "configs/guides/smollm2_transformers.yaml", "options": {"num_threads": 1}}
# SmolLM2 shown three solved problems (data seed 99, not a training seed) so that it writes the task's format; its
# sums stay wrong, so only its opening is worth anything: the group member starts with its first fifth
FEW_SHOT = ("Answer in the same format as these examples, on one line.\n\n"
            + "\n\n".join(f"Q: {p.question}\nA:{p.solution('reason').rstrip()}" for p in reasoning_problems(3, 99))
            + "\n\n{prompt}")
SMOLLM2_SHOTS = {**SMOLLM2, "cot": {"prompt_template": FEW_SHOT}}
# the project's task guide, trained on the task's documents (build: scripts/make_task_guide.py, both stages)
TASK_GUIDE = {"config": "configs/guides/task_guide_transformers.yaml", "options": {"num_threads": 1}}
STEPS = {"verifier": 1.0, "steps": 1.0}            # the verifier plus the task's step check
FIX = {**STEPS, "corrections": 50.0}              # plus the task's corrections (a value's token = 50 answer tokens)
IN_GROUP = [("self", SELF), ("rationales", RATIONALES), ("taskguide", TASK_GUIDE)]   # guides of those rows
RL_ROWS: dict[str, tuple[dict, dict]] = {   # name -> (guide section, reward section)
    "grpo-verifier": ({}, {"terms": {"verifier": 1.0}}),
    "match-rationales": (RATIONALES, {"kind": "match"}),
    "match-self": (SELF, {"kind": "match"}),
    "rejection-self": ({**SELF, "cot": {"verify": True}}, {"kind": "match"}),
    "rejection-self+verifier": ({**SELF, "cot": {"verify": True}}, {"terms": {"match": 1.0, "verifier": 1.0}}),
    "on-policy-self": (SELF, {"terms": {"on_policy": 1.0}}),
    "on-policy+verifier": (SELF, {"terms": {"on_policy": 1.0, "verifier": 1.0}}),
    "grpo+guide-self": (SELF, {"terms": {"verifier": 1.0}, "guide_in_group": True}),
    "grpo+guide-rationales": (RATIONALES, {"terms": {"verifier": 1.0}, "guide_in_group": True}),
    "match-smollm2": (SMOLLM2, {"kind": "match"}),
    "grpo+guide-smollm2": (SMOLLM2, {"terms": {"verifier": 1.0}, "guide_in_group": True}),
    "grpo+prefix-smollm2": (SMOLLM2_SHOTS, {"terms": {"verifier": 1.0}, "guide_in_group": True,
                                            "guide_prefix": 0.2}),
    "grpo+guide-taskguide": (TASK_GUIDE, {"terms": {"verifier": 1.0}, "guide_in_group": True}),
    "grpo+prefix-taskguide": (TASK_GUIDE, {"terms": {"verifier": 1.0}, "guide_in_group": True,
                                           "guide_prefix": 0.2}),
    "grpo+steps": ({}, {"terms": STEPS}),
    **{f"grpo+steps+guide-{name}": (guide, {"terms": STEPS, "guide_in_group": True}) for name, guide in IN_GROUP},
    **{f"grpo+fix+guide-{name}": (guide, {"terms": FIX, "guide_in_group": True}) for name, guide in IN_GROUP},
}
# supervised on that guide's greedy CoTs
TUNE_GUIDES = {"tune-self": SELF, "tune-smollm2": SMOLLM2_SHOTS, "tune-taskguide": TASK_GUIDE}
LORA_ROWS = {"lora-matched": (8, "attention"),   # r 8 on receptance/key/value/output: 6 x 4 x 2 x 128 x 8 = 49,152
             "lora-usual": (16, "all")}        # numbers, the state's 6 x 2 x 64 x 64; "usual": r 16 on all linears
ROWS = ["frozen", "frozen+header", "tune-rationales", "tune-self", "tune-smollm2", "tune-taskguide", "lora-matched",
        "lora-usual", "match-rationales", "grpo-verifier", "on-policy-self", "rejection-self", "on-policy+verifier",
        "match-self", "rejection-self+verifier", "grpo+guide-self", "grpo+guide-rationales", "match-smollm2",
        "grpo+guide-smollm2", "grpo+prefix-smollm2", "grpo+guide-taskguide", "grpo+prefix-taskguide", "grpo+steps",
        "grpo+steps+guide-self", "grpo+steps+guide-rationales", "grpo+steps+guide-taskguide", "grpo+fix+guide-self",
        "grpo+fix+guide-rationales", "grpo+fix+guide-taskguide"]


def fresh_examples(seed: int, n: int, train: list[Example]) -> list[Example]:
    seen = {e.prompt for e in train}
    return [Example(p.prompt(), p.solution("reason"), str(p.answer)) for p in reasoning_problems(n, seed)
            if p.prompt() not in seen]


def guide_targets(base: RLConfig, guide: dict, path: Path) -> tuple[Path, int]:
    """A jsonl task of the training prompts with a guide's greedy CoTs as targets (the CoT items' text: join + CoT
    + suffix), in the synthetic task's order; its one held-out row (jsonl tasks hold some out) is a copy of the
    first. ``guide`` is a row's guide section (the self-guide writes as the RL rows' self-guide does). Greedy CoTs
    do not depend on the seed: a file written before for the same row is read back."""
    tok = WorldTokenizer()
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines()[1:]]
        return path, sum(len(tok.encode(r["target"].strip())) for r in rows)
    out = path.parent / path.name.removesuffix("-targets.jsonl")
    cfg = variant(base, guide, {"terms": {"verifier": 1.0}}, base.train.seed, base.train.steps, out)
    cot = cfg.guide.cot.model_copy(update={"stop": cfg.guide.cot.stop or ["\n"]})
    model = load_model(base.model.path, base.model.dtype, backend=base.model.wkv_backend)
    writer = make_local_guide(cfg, model, tok, out)
    train, _ = load_examples(base.data)
    raw = writer.generate([guide_prompt(e.prompt, cot) for e in train], cot.max_tokens, 0.0)
    texts = [clean_guide_text(t, cot) for t in raw]
    writer.close()
    rows = [{"prompt": it.prompt, "target": it.cot, "answer": e.answer}
            for e, it in zip(train, make_items(train, texts, cot))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:1] + rows))
    return path, sum(len(tok.encode(t)) for t in texts)


def rl_variant(base: RLConfig, row: str, seed: int, steps: int, out: Path) -> RLConfig:
    return variant(base, *RL_ROWS[row], seed, steps, out)


def variant(base: RLConfig, guide: dict, reward: dict, seed: int, steps: int, out: Path) -> RLConfig:
    """``base`` with a row's guide and reward sections, seed, step budget and folder (no held-out pass)."""
    d = base.model_dump(mode="json")
    cot = {**d["guide"]["cot"], "verify": False, **guide.get("cot", {})}   # the filter only where the row says
    d["guide"] = {**{k: v for k, v in guide.items() if k != "cot"}, "cot": cot}
    own = ("kind", "terms", "guide_in_group", "guide_prefix")     # what a row's reward section decides
    d["reward"] = {**{k: v for k, v in d["reward"].items() if k not in own}, **reward}
    d["train"] = {**d["train"], "seed": seed, "steps": steps, "eval": False, "out_dir": str(out)}
    return RLConfig.model_validate(d)


def guide_tokens(run_dir: Path) -> int:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return int(sum(r.get("reward_guide_tokens", 0) for r in recs) + (recs[-1].get("guide_tokens") or 0))


def run_row(row: str, base: RLConfig, seed: int, steps: int, out: Path) -> tuple[Path | None, float, int]:
    """(state file or None, tuning wall seconds, guide tokens)."""
    t0 = time.time()
    if row in ("tune-rationales",) + tuple(TUNE_GUIDES):
        d = base.model_dump(mode="json", include={"model", "data", "optim", "train", "upscale", "dbp"})
        d["train"] = {**d["train"], "seed": seed, "steps": steps, "eval": False, "out_dir": str(out)}
        g_tokens = 0
        if row in TUNE_GUIDES:
            path, g_tokens = guide_targets(base, TUNE_GUIDES[row], out.parent / f"{row}-targets.jsonl")
            d["data"] = {"task": "jsonl", "path": str(path), "train_size": base.data.train_size, "eval_size": 1}
        tune(TuneConfig.model_validate(d), progress=False, overwrite=True)
        return out / "state.safetensors", time.time() - t0, g_tokens
    if row in LORA_ROWS:
        from rl_statetune.hf.sft import sft_tune
        d = base.model_dump(mode="json", include={"model", "data", "optim", "train"})
        d["train"] = {**d["train"], "seed": seed, "steps": steps, "eval": False, "out_dir": str(out)}
        r, targets = LORA_ROWS[row]
        sft_tune(TuneConfig.model_validate(d), out_dir=out, evaluate=False, lora={"r": r, "targets": targets})
        return out, time.time() - t0, 0
    cfg = rl_variant(base, row, seed, steps, out)
    run_rl(cfg, progress=False, overwrite=True)
    return out / "state.safetensors", time.time() - t0, guide_tokens(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/rl_quick.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="every row's step budget (default: the config's)")
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--fresh-seed", type=int, default=777)
    ap.add_argument("--fresh-size", type=int, default=256)
    ap.add_argument("--out-dir", default="runs/rl_vs_imitation")
    ap.add_argument("--out", default="benchmarks/out/rl_vs_imitation.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="override the base config, e.g. optim.lr=1.0")
    ap.add_argument("--eval-batch", type=int, default=256, help="held-out problems per generation batch")
    ap.add_argument("--resume", action="store_true", help="skip the (row, seed) runs already in --out")
    ap.add_argument("--table", default=None, help="only print the table of a results file written before")
    args = ap.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(table(saved["rows"], saved["meta"]))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    base = load_rl_config(args.config, args.set)
    steps = args.steps or base.train.steps
    model = load_model(base.model.path, base.model.dtype, backend=base.model.wkv_backend)
    tok = WorldTokenizer()
    train, _ = load_examples(base.data)
    fresh = fresh_examples(args.fresh_seed, args.fresh_size, train)
    budget = base.train.eval_max_new_tokens
    results: dict[str, list[dict]] = {}
    if args.resume and Path(args.out).exists():     # keep the (row, seed) records of an earlier, cut-off run
        results = json.loads(Path(args.out).read_text())["rows"]
    meta = {"config": args.config, "steps": steps, "seeds": args.seeds, "fresh_seed": args.fresh_seed,
            "fresh_size": len(fresh), "sets": args.set, "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # seed-major: every row once before any row twice (a cut-off run still covers every row)
    plan = [(row, seed) for seed in args.seeds for row in args.rows
            if not (row.startswith("frozen") and seed != args.seeds[0])]   # the frozen rows are deterministic
    for row, seed in plan:
        if any(r["seed"] == seed for r in results.get(row, [])):
            continue
        state_file, wall, g_tokens = None, 0.0, 0
        if not row.startswith("frozen"):
            state_file, wall, g_tokens = run_row(row, base, seed, steps, Path(args.out_dir) / f"{row}-{seed}")
        scored_model, tunable = model, None
        if row in LORA_ROWS:
            scored_model = merged_lora(base.model.path, state_file)
        elif state_file:
            tunable = load_tunable(state_file, model.config)
        exs = fresh if row != "frozen+header" else [Example(mode_header("reason") + e.prompt, e.target, e.answer)
                                                    for e in fresh]
        h = held_out(scored_model, tok, exs, tunable, "sentence", budget, args.eval_batch)
        rec = {"seed": seed, "accuracy": h.accuracy, "tokens_per_answer": h.mean_tokens, "guide_tokens": g_tokens,
               "wall_s": round(wall, 1)}
        results.setdefault(row, []).append(rec)
        print(json.dumps({"row": row, **rec}), flush=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1))   # as runs finish
    print(table(results, meta))


def merged_lora(model_path: str, adapter_dir: Path):
    """The frozen model with the PEFT adapter saved in ``adapter_dir`` merged into its weights (our RWKV7)."""
    from peft import PeftModel

    from rl_statetune.hf.modeling import RWKV7ForCausalLM
    peft_model = PeftModel.from_pretrained(RWKV7ForCausalLM.from_pretrained(model_path), str(adapter_dir))
    return peft_model.merge_and_unload().rwkv.eval()


def mean_sd(xs: list[float | None], fmt: str) -> str:
    if any(x is None for x in xs):     # not recorded (a run resumed by hand)
        return "-"
    m = statistics.fmean(xs)
    return (fmt % m) + (" ± " + fmt % statistics.stdev(xs) if len(xs) > 1 else "")


def table(results: dict[str, list[dict]], meta: dict) -> str:
    lines = [f"fresh held-out: {meta['fresh_size']} problems, data seed {meta['fresh_seed']}, greedy; "
             f"{meta['steps']} steps per run",
             "| row | seeds | accuracy | tokens/answer | guide tokens per run | wall s per run |",
             "|---|---|---|---|---|---|"]
    for row, recs in results.items():
        lines.append(f"| {row} | {len(recs)} | {mean_sd([r['accuracy'] for r in recs], '%.3f')} | "
                     f"{mean_sd([r['tokens_per_answer'] for r in recs], '%.1f')} | "
                     f"{mean_sd([r['guide_tokens'] for r in recs], '%.0f')} | "
                     f"{mean_sd([r['wall_s'] for r in recs], '%.0f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

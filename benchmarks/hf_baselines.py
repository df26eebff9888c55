"""Held-out accuracy of state tuning against the Hugging Face baselines, same task, data and step budget, all
through the same wrapper (RWKV7ForCausalLM) and TRL trainers:

  state           plain tuned initial state (TRL SFTTrainer, completion-only loss)
  upscaled        + kernel-upscaled state (upscale.enabled)
  upscaled+dbp    + decorrelation of the kernel features (dbp.enabled)
  lora-matched    PEFT LoRA on the attention projections at about the state's parameter count
  lora-usual      PEFT LoRA r=8 on every attention and channel-mix projection (the usual recipe)
  grpo            TRL GRPOTrainer on the plain state, answer-correctness reward (no guide, no targets)
  guided-rl       the project's guided single-step alignment RL on the plain state (rl_statetune.rl, one
                  process): the task's own rationales as the guide, token-match reward, 8 samples per position

    OMP_NUM_THREADS=1 python benchmarks/hf_baselines.py --config configs/answer_format.yaml --seeds 0 1 2
    [--methods state lora-matched ...] [--set train.steps=30] [--json out.json]

Prints one row per method: tuned parameters, artefact size, held-out accuracy mean +- std over the seeds (and
each seed's), wall seconds of training. LoRA's lr is its own (--lora-lr, decayed 100x like the state's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("state", "upscaled", "upscaled+dbp", "lora-matched", "lora-usual", "grpo", "guided-rl")


def matched_lora_rank(cfg) -> int:
    """LoRA rank on the 4 attention projections (C x C each) whose parameter count is closest to the state's."""
    state = cfg.n_layer * cfg.n_head * cfg.head_size ** 2
    per_rank = cfg.n_layer * 4 * 2 * cfg.n_embd
    return max(1, round(state / per_rank))


def _state_values(cfg) -> int:
    from rl_statetune.checkpoint import load_model

    L, H, N, _ = load_model(cfg.model.path).config.state_shape()
    return L * H * N * N


def run(method: str, cfg, out: str, lora_lr: float, generations: int) -> dict:
    from rl_statetune.hf.grpo import grpo_tune
    from rl_statetune.hf.sft import sft_tune

    if method == "guided-rl":
        from rl_statetune.rl.config import RLConfig
        from rl_statetune.rl.driver import run_rl

        d = cfg.model_dump(mode="json")
        rl = RLConfig.model_validate({**{k: d[k] for k in ("model", "data", "optim", "upscale", "dbp")},
                                      "train": {**d["train"], "out_dir": out},
                                      "guide": {"task_rationales": True}, "reward": {"kind": "match", "samples": 8},
                                      "pg": {"advantage": "batch"}})
        r = run_rl(rl, progress=False)
        return dict(acc=r.acc_after, acc_before=r.acc_before, params=_state_values(cfg),
                    bytes=(Path(out) / "state.pth").stat().st_size, seconds=r.seconds)
    if method == "grpo":
        r = grpo_tune(cfg, out, generations=generations)
        return dict(acc=r.acc_after, acc_before=r.acc_before, params=r.tuned_parameters, bytes=r.artefact_bytes,
                    seconds=r.train_seconds)
    lora = None
    if method == "upscaled":
        cfg = cfg.model_copy(update={"upscale": cfg.upscale.model_copy(update={"enabled": True})})
    elif method == "upscaled+dbp":
        cfg = cfg.model_copy(update={"upscale": cfg.upscale.model_copy(update={"enabled": True}),
                                     "dbp": cfg.dbp.model_copy(update={"enabled": True})})
    elif method.startswith("lora"):
        from rl_statetune.checkpoint import load_model

        mcfg = load_model(cfg.model.path).config
        lora = ({"r": matched_lora_rank(mcfg), "targets": "attention"} if method == "lora-matched"
                else {"r": 8, "targets": "all"})
        lora |= {"lr": lora_lr, "lr_final": lora_lr / 100}
    r = sft_tune(cfg, out, lora=lora)
    return dict(acc=r.acc_after, acc_before=r.acc_before, params=r.tuned_parameters, bytes=r.artefact_bytes,
                seconds=r.train_seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/answer_format.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--lora-lr", type=float, default=1e-2)
    ap.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from rl_statetune.config import load_config

    results: dict[str, list[dict]] = {m: [] for m in a.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            cfg = load_config(a.config, overrides=a.set + [f"train.seed={seed}"])
            for m in a.methods:
                r = run(m, cfg, f"{tmp}/{m}-{seed}", a.lora_lr, a.generations)
                r["seed"] = seed
                results[m].append(r)
                print(f"[{m} seed {seed}] acc {r['acc_before']:.3f} -> {r['acc']:.3f}  params {r['params']}  "
                      f"{r['seconds']:.0f} s", flush=True)
                if a.json:
                    Path(a.json).write_text(json.dumps({"config": a.config, "set": a.set, "results": results},
                                                       indent=2))
    print(f"\nconfig {a.config} {' '.join(a.set)}  seeds {a.seeds}")
    print(f"{'method':14s} {'tuned params':>12s} {'file KB':>8s} {'acc before':>10s} {'held-out acc':>14s} "
          f"{'per seed':>22s} {'train s':>8s}")
    for m, rs in results.items():
        accs = [r["acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{m:14s} {rs[0]['params']:12d} {rs[0]['bytes'] / 1024:8.1f} {rs[0]['acc_before']:10.3f} "
              f"{statistics.mean(accs):8.3f}+-{sd:.3f} {' '.join(f'{x:.3f}' for x in accs):>22s} "
              f"{statistics.mean(r['seconds'] for r in rs):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

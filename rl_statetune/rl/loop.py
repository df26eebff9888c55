"""Single-process guide-driven RL: the guide writes a CoT batch, the learner takes a policy-gradient step.

Guide and learner alternate in one process (no overlap; ``learner_wait_s`` is the time spent on the guide).
The Ray version (``rl_statetune.rl.distributed``) runs them concurrently over several learners.
"""

from __future__ import annotations

import logging
import time

import torch
from rl_statetune_guides import Guide, build_guide
from tqdm.auto import tqdm

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.rl.learner import GUIDE_SCORED_REWARDS, Learner
from rl_statetune.rl.outputs import (
    MetricsLog,
    RLResult,
    heldout,
    load_checkpoint,
    save_checkpoint,
    save_final_state,
    window_means,
)
from rl_statetune.rl.source import NEEDS_COT_SCORES, CotSource
from rl_statetune.trainer import start_run

log = logging.getLogger("rl_statetune.rl")


def run_rl(cfg: RLConfig, resume: bool = False, progress: bool = True, guide: Guide | None = None) -> RLResult:
    """Tune the state with guide rewards. ``guide`` overrides ``cfg.guide`` (e.g. an already loaded model)."""
    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    out, model, tok, train, held = start_run(cfg)
    held = held[: cfg.train.eval_size] if cfg.train.eval_size else held
    own_guide = guide is None
    if own_guide:
        guide = build_guide(resolve_guide_config(cfg.guide, cfg.data, out))
    learner = Learner(model, tok, cfg, guide if cfg.reward.kind in GUIDE_SCORED_REWARDS else None,
                      seed=cfg.train.seed)
    source = CotSource(guide, train, cfg.guide, cfg.train.prompts_per_step, cfg.train.seed, tok,
                       score=cfg.reward.kind in NEEDS_COT_SCORES)
    start, acc_before, rewards = 0, float("nan"), []
    if resume:
        saved = load_checkpoint(out, cfg)
        learner.load_checkpoint(saved)
        start, acc_before, rewards = saved["step"], saved["acc_before"], saved["rewards"]
        log.info("resumed at step %d", start)
    else:
        acc_before = heldout(model, tok, held, cfg, None)

    steps = cfg.train.steps
    metrics = MetricsLog(out / "metrics.jsonl")
    learner_s = wait_s = 0.0
    tokens = 0
    try:
        for step in tqdm(range(start, steps), initial=start, total=steps, desc="rl", disable=not progress):
            t0 = time.perf_counter()
            items = source.batch(step)
            wait_s += time.perf_counter() - t0
            m = learner.train_step(items, step, steps)
            learner_s += m["learner_s"]
            tokens += m["tokens"]
            rewards.append(m["reward"])
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
                rec = {"step": step + 1, **{k: v for k, v in m.items() if k not in ("learner_s",)},
                       "guide_tokens_per_s": source.stats.tokens_per_s,
                       "learner_tokens_per_s": tokens / max(learner_s, 1e-9), "learner_wait_s": wait_s}
                metrics.write(rec)
                log.info("step %d reward %.4f match %.3f guide %.0f tok/s learner %.0f tok/s waited %.1f s",
                         step + 1, m["reward"], m.get("match_argmax", float("nan")), rec["guide_tokens_per_s"],
                         rec["learner_tokens_per_s"], wait_s)
            if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == steps:
                save_checkpoint(out, cfg, step + 1, learner.checkpoint(),
                                {"acc_before": acc_before, "rewards": rewards})
    finally:
        metrics.close()
        if own_guide:
            guide.close()
    save_final_state(out, cfg, learner.state.time_state, model.config, steps)
    first, last = window_means(rewards, max(3, cfg.train.log_every))
    res = RLResult(str(out), steps, first, last, rewards, acc_before,
                   heldout(model, tok, held, cfg, learner.state.time_state),
                   source.stats.tokens_per_s, tokens / max(learner_s, 1e-9), wait_s, time.time() - t_start)
    res.save(out)
    return res

"""Supervised state tuning: only the tunables learn (S0; with ``upscale`` also S~0 and R); the loss covers the
target tokens only.

Writes into ``train.out_dir`` (see ``rl_statetune.run.folder``): ``checkpoint.pt`` (every tunable, optimiser,
step; atomic, every ``ckpt_every`` steps and on SIGINT / SIGTERM; ``--resume`` continues bit-for-bit),
``metrics.jsonl``, and at the end ``state.pth`` (runtime format), ``state.safetensors`` (with metadata) and
``result.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rl_statetune.config import TuneConfig
from rl_statetune.data import Batch, collate
from rl_statetune.model import RWKV7
from rl_statetune.run.folder import Interrupted, RunDir, stop_on_signals
from rl_statetune.run.heldout import HeldOut, run_held_out
from rl_statetune.run.setup import (BatchOrder, check_skipped, guarded_step, lr_at, make_optimizer, make_tunable, save_tuned,
                                    set_lr, start_run, state_norms)

log = logging.getLogger("rl_statetune.tune")


def target_loss(model: RWKV7, tunable, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the target tokens, starting every row from the tuned state."""
    hidden, _ = model.hidden(batch.idx, tunable.initial_state(model, batch.idx.shape[0]), lengths=batch.lengths)
    logits = model.head(hidden[:, :-1][batch.loss_mask])  # the vocabulary projection only where it is scored
    return F.cross_entropy(logits.float(), batch.idx[:, 1:][batch.loss_mask])


@dataclass
class TuneResult:
    out_dir: str
    steps: int
    final_loss: float
    acc_before: float
    acc_after: float
    seconds: float
    skipped_steps: int = 0
    tokens_before: float = float("nan")    # mean generated tokens per held-out answer (test-time compute)
    tokens_after: float = float("nan")
    tuning_seconds: float = float("nan")   # the optimisation steps alone (no held-out evaluation)
    already_finished: bool = False         # --resume of a finished run: its stored result, nothing written

    @classmethod
    def from_dict(cls, d: dict) -> "TuneResult":
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items() if k in cls.__dataclass_fields__})


def tune(cfg: TuneConfig, resume: bool = False, progress: bool = True, evaluate: bool = True,
         overwrite: bool = False) -> TuneResult:
    run = RunDir(cfg.train.out_dir, cfg.model_dump(mode="json"), resume, overwrite)
    try:
        return _tune(run, cfg, resume, progress, evaluate)
    finally:
        run.close()


def _tune(run: RunDir, cfg: TuneConfig, resume: bool, progress: bool, evaluate: bool) -> TuneResult:
    t_start = time.time()
    finished = run.open()
    if finished is not None:
        return TuneResult.from_dict({**finished, "already_finished": True})
    torch.manual_seed(cfg.train.seed)
    model, tok, train, held = start_run(cfg)
    cfg_eval = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval": cfg.train.eval and evaluate})})
    state = make_tunable(model, tok, train, cfg)
    opt = make_optimizer(state, cfg)
    start, before, loss_val, skipped = 0, HeldOut.none(), float("nan"), 0
    if resume:
        saved = run.saved
        state.load_state_dict(saved["tunable"])
        opt.load_state_dict(saved["optimizer"])
        start, before = saved["step"], HeldOut(saved["acc_before"], saved.get("tokens_before", float("nan")), 0.0)
        loss_val, skipped = saved.get("loss", float("nan")), saved.get("skipped", 0)
        log.info("resumed from %s at step %d", run.path, start)
    else:
        before = run_held_out(cfg_eval, model, tok, held, state if cfg.train.init_state else None)
        if cfg_eval.train.eval:
            log.info("held-out accuracy before tuning: %.3f (%d examples, %.1f generated tokens per answer)",
                     before.accuracy, len(held), before.mean_tokens)

    def checkpoint(step: int) -> None:
        run.save_checkpoint(step, {"tunable": {k: v.detach().clone() for k, v in state.state_dict().items()},
                                   "optimizer": opt.state_dict(), "acc_before": before.accuracy,
                                   "tokens_before": before.mean_tokens, "loss": loss_val,
                                   "skipped": skipped})

    order = BatchOrder(len(train), cfg.train.batch_size, cfg.train.seed)
    steps, accum = cfg.train.steps, cfg.train.grad_accum
    t0, tokens = time.time(), 0
    with run.metrics() as metrics, stop_on_signals() as stop:
        bar = tqdm(range(start, steps), initial=start, total=steps, desc="tune", disable=not progress)
        for step in bar:
            lr = lr_at(step, steps, cfg.optim)
            set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in range(accum):
                batch = collate([train[i] for i in order.indices(step * accum + micro)], tok, cfg.train.max_len)
                loss = target_loss(model, state, batch)
                (loss / accum).backward()
                loss_sum += loss.item() / accum
                tokens += int(batch.lengths.sum())
            if guarded_step(state, opt, loss_sum, cfg, step):
                loss_val = loss_sum
            else:
                skipped += 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 in (1, steps):
                rate = tokens / max(time.time() - t0, 1e-9)
                metrics.write({"step": step + 1, "loss": round(loss_sum, 5), "lr": lr,
                               "tokens_per_s": round(rate, 1), **state_norms(state), "skipped": skipped})
                bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.3g}", tok_s=f"{rate:,.0f}")
                log.info("step %d loss %.4f lr %.4g tokens/s %.0f", step + 1, loss_sum, lr, rate)
            if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == steps or stop:
                checkpoint(step + 1)
            if stop and step + 1 < steps:
                raise Interrupted(stop.signum, step + 1, run.path)

    tuning_s = time.time() - t0
    check_skipped(skipped, steps, cfg)
    save_tuned(run.path, state, cfg, model, {"steps": steps, "final_loss": loss_val})
    after = run_held_out(cfg_eval, model, tok, held, state)
    result = TuneResult(str(run.path), steps, loss_val, before.accuracy, after.accuracy, time.time() - t_start,
                        skipped, before.mean_tokens, after.mean_tokens, tuning_s)
    run.write_result(asdict(result))
    if cfg_eval.train.eval:
        log.info("held-out accuracy: %.3f before -> %.3f after tuning; generated tokens per answer %.1f -> %.1f",
                 before.accuracy, after.accuracy, before.mean_tokens, after.mean_tokens)
    return result


__all__ = ["TuneResult", "target_loss", "tune"]

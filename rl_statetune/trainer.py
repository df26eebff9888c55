"""Supervised state tuning: only the initial WKV state learns; the loss covers the target tokens only.

Writes into ``train.out_dir``: ``checkpoint.pt`` (state + optimiser + step, atomic, every ``ckpt_every`` steps;
``--resume`` continues from it bit-for-bit), ``metrics.jsonl`` (one line per logged step), and at the end
``state.pth`` (the runtime format) and ``state.safetensors`` (with metadata).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rl_statetune.atomic import atomic_torch_save
from rl_statetune.checkpoint import load_model
from rl_statetune.config import OptimConfig, TuneConfig
from rl_statetune.data import Batch, Example, collate, load_examples
from rl_statetune.generation import generate
from rl_statetune.model import RWKV7
from rl_statetune.paths import resolve_model_path
from rl_statetune.state import TimeState, initial_state_fn, model_fingerprint, save_state
from rl_statetune.synthetic import extract_answer
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.upscale import UpscaledState, dbp_step, param_groups

log = logging.getLogger("rl_statetune.tune")


def start_run(cfg) -> tuple[Path, RWKV7, WorldTokenizer, list[Example], list[Example]]:
    """What a tuning run (supervised, RL, distributed RL) starts from: its output folder (created), the frozen
    model, the tokenizer, and the train / held-out examples. ``cfg`` has ``model``, ``data`` and ``train.out_dir``."""
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.model.path, cfg.model.dtype, backend=cfg.model.wkv_backend)
    tok = WorldTokenizer()
    train, held = load_examples(cfg.data)
    return out, model, tok, train, held


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then geometric decay from lr to lr_final (RWKV-PEFT's state-tuning schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps - 1, 1)
    return cfg.lr * (cfg.lr_final / cfg.lr) ** min(max(frac, 0.0), 1.0)


def target_loss(model: RWKV7, tunable, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the target tokens, starting every row from the tuned state."""
    hidden, _ = model.hidden(batch.idx, tunable.initial_state(model, batch.idx.shape[0]), lengths=batch.lengths)
    logits = model.head(hidden[:, :-1][batch.loss_mask])  # the vocabulary projection only where it is scored
    return F.cross_entropy(logits.float(), batch.idx[:, 1:][batch.loss_mask])


def held_out_accuracy(model, tokenizer, examples: list[Example], tunable=None, target_format: str | None = None,
                      max_new_tokens: int = 32, batch_size: int = 32) -> float:
    """Greedy completions scored by the task's rule: the synthetic task's answer in the target format, or an
    exact match of the target's first line."""
    if not examples:
        return float("nan")
    outs = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens,
                    init_state=initial_state_fn(model, tunable), batch_size=batch_size)
    correct = 0
    for e, o in zip(examples, outs):
        if target_format is not None:
            correct += extract_answer(o, target_format) == int(e.answer)
        else:
            correct += o.strip() == e.target.strip().split("\n")[0]
    return correct / len(examples)


def make_tunable(model: RWKV7, tok, train: list[Example], cfg: TuneConfig) -> TimeState:
    """The zero-initialised tunable: a ``TimeState``, or an ``UpscaledState`` when ``upscale.enabled``."""
    if not cfg.upscale.enabled:
        return TimeState(model.config)
    from rl_statetune.support import support_from_config

    maps = support_from_config(model, tok, [e.prompt + e.target for e in train], cfg.upscale, cfg.train.seed,
                               cfg.upscale.support_texts)
    state = UpscaledState(model.config, maps)
    if cfg.dbp.enabled:
        state.set_recording(cfg.dbp.subsample)
    return state


def tunable_param_groups(state: TimeState, cfg: TuneConfig) -> list[dict]:
    up = cfg.upscale
    return param_groups(state, cfg.optim.lr, up.lr, up.r_lr, up.train_r)


@dataclass
class TuneResult:
    out_dir: Path
    steps: int
    final_loss: float
    acc_before: float
    acc_after: float
    seconds: float


class BatchOrder:
    """Deterministic shuffled batches: batch ``i`` depends only on (seed, i), so a resumed run sees the same data."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.bs, self.seed = n, batch_size, seed

    def indices(self, i: int) -> list[int]:
        per_epoch = max(self.n // self.bs, 1)
        epoch, j = divmod(i, per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return perm[j * self.bs: (j + 1) * self.bs].tolist()


def tune(cfg: TuneConfig, resume: bool = False, progress: bool = True, evaluate: bool = True) -> TuneResult:
    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    out, model, tok, train, held = start_run(cfg)
    fmt = cfg.data.target_format if cfg.data.task == "synthetic" else None
    state = make_tunable(model, tok, train, cfg)
    opt = torch.optim.AdamW(tunable_param_groups(state, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    start, acc_before = 0, float("nan")
    ckpt = out / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved["config"] != cfg.model_dump(mode="json"):
            raise ValueError(f"--resume: {ckpt} was written with a different configuration")
        state.load_state_dict(saved["tunable"])
        opt.load_state_dict(saved["optimizer"])
        start, acc_before = saved["step"], saved["acc_before"]
        log.info("resumed from %s at step %d", ckpt, start)
    elif evaluate:
        acc_before = held_out_accuracy(model, tok, held, None, fmt, cfg.train.eval_max_new_tokens)
        log.info("held-out accuracy before tuning: %.3f (%d examples)", acc_before, len(held))

    order = BatchOrder(len(train), cfg.train.batch_size, cfg.train.seed)
    steps, accum = cfg.train.steps, cfg.train.grad_accum
    metrics = open(out / "metrics.jsonl", "a")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="tune", disable=not progress)
    t0, tokens, loss_val = time.time(), 0, float("nan")
    for step in bar:
        lr = lr_at(step, steps, cfg.optim)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(accum):
            batch = collate([train[i] for i in order.indices(step * accum + micro)], tok, cfg.train.max_len)
            loss = target_loss(model, state, batch)
            (loss / accum).backward()
            loss_sum += loss.item() / accum
            tokens += int(batch.lengths.sum())
        torch.nn.utils.clip_grad_norm_(state.parameters(), cfg.optim.grad_clip)
        opt.step()
        decor = dbp_step(state, cfg.dbp.eta, cfg.dbp.kappa) if cfg.dbp.enabled else None
        loss_val = loss_sum
        if (step + 1) % cfg.train.log_every == 0 or step + 1 in (1, steps):
            rate = tokens / max(time.time() - t0, 1e-9)
            rec = {"step": step + 1, "loss": round(loss_val, 5), "lr": lr, "tokens_per_s": round(rate, 1),
                   "state_norm": round(state.time_state.norm().item(), 4)}
            if isinstance(state, UpscaledState):
                rec["lifted_norm"] = round(state.lifted_state.norm().item(), 4)
            if decor is not None:
                rec["decor_loss"] = round(decor, 6)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.3g}", tok_s=f"{rate:,.0f}")
            log.info("step %d loss %.4f lr %.4g tokens/s %.0f", step + 1, loss_val, lr, rate)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == steps:
            atomic_torch_save({"step": step + 1,
                          "tunable": {k: v.detach().clone() for k, v in state.state_dict().items()},
                          "optimizer": opt.state_dict(), "config": cfg.model_dump(mode="json"),
                          "acc_before": acc_before}, ckpt)
    metrics.close()

    meta = {"format": "rl_statetune/time_state", "base_model": str(cfg.model.path),
            "base_model_sha256_16": model_fingerprint(resolve_model_path(cfg.model.path)),
            "model_config": model.config.__dict__, "tune_config": cfg.model_dump(mode="json"),
            "steps": steps, "final_loss": loss_val}
    extras = state.extras() if isinstance(state, UpscaledState) else None
    if extras:
        meta |= state.metadata()
    save_state(out / "state.pth", state.time_state)  # runtime format: the standard state only
    save_state(out / "state.safetensors", state.time_state, metadata=meta, extras=extras)
    acc_after = held_out_accuracy(model, tok, held, state, fmt, cfg.train.eval_max_new_tokens) if evaluate \
        else float("nan")
    result = TuneResult(out, steps, loss_val, acc_before, acc_after, time.time() - t_start)
    (out / "result.json").write_text(json.dumps({**result.__dict__, "out_dir": str(out)}, indent=2))
    if evaluate:
        log.info("held-out accuracy: %.3f before -> %.3f after tuning", acc_before, acc_after)
    return result

"""What a run starts from and how it steps: frozen model, tokenizer and data; the tunables (S0, and with
``upscale`` the lifted S~0 and R), their optimiser and LR schedule; the guarded optimiser step; the final files."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.config import OptimConfig, RunConfig
from rl_statetune.data import Example, load_examples
from rl_statetune.lm import NonFiniteLogits, check_finite
from rl_statetune.model import RWKV7
from rl_statetune.paths import resolve_model_path
from rl_statetune.state import TimeState, model_fingerprint
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.upscale import UpscaledState, dbp_step, param_groups, save_tunable

log = logging.getLogger("rl_statetune.run")

AllReduce = Callable[[torch.Tensor], torch.Tensor]   # averages a tensor over data-parallel learners


def start_run(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[RWKV7, WorldTokenizer, list[Example],
                                                                           list[Example]]:
    """The frozen model, the tokenizer, and the train / held-out examples of ``cfg``."""
    m = cfg.model
    model = load_model(m.path, m.dtype, device, m.wkv_backend)
    train, held = load_examples(cfg.data)
    return model, WorldTokenizer(), train, held


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then geometric decay from lr to lr_final (RWKV-PEFT's state-tuning schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps - 1, 1)
    return cfg.lr * (cfg.lr_final / cfg.lr) ** min(max(frac, 0.0), 1.0)


class BatchOrder:
    """Deterministic shuffled batches: batch ``i`` depends only on (seed, i), so a resumed run, or any number of
    learners taking batches ``step * N + rank``, sees the same data."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.bs, self.seed = n, batch_size, seed

    def indices(self, i: int) -> list[int]:
        per_epoch = max(self.n // self.bs, 1)
        epoch, j = divmod(i, per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return perm[j * self.bs: (j + 1) * self.bs].tolist()


def make_tunable(model: RWKV7, tok, train: list[Example], cfg: RunConfig) -> TimeState:
    """The zero-initialised tunable: a ``TimeState``, or an ``UpscaledState`` when ``upscale.enabled`` (feature
    maps chosen on the task's training texts, deterministically from ``train.seed``); with ``train.init_state``
    the tunable that file holds (``start_tunable``)."""
    if cfg.train.init_state is not None:
        state = start_tunable(model, cfg)
    elif not cfg.upscale.enabled:
        state = TimeState(model.config)
    else:
        from rl_statetune.support import support_from_config

        maps = support_from_config(model, tok, [e.prompt + e.target for e in train], cfg.upscale, cfg.train.seed,
                                   cfg.upscale.support_texts)
        state = UpscaledState(model.config, maps)
    state = state.to(model.emb.weight.device)
    if cfg.dbp.enabled:     # dbp needs upscale, and start_tunable checks the file's state is upscaled then
        state.set_recording(cfg.dbp.subsample)
    return state


def start_tunable(model: RWKV7, cfg: RunConfig) -> TimeState:
    """The tunable in ``train.init_state`` (its feature bases too, on the CPU), checked against
    ``upscale.enabled``."""
    from rl_statetune.upscale import load_tunable

    path = cfg.train.init_state
    if not Path(path).is_file():
        raise FileNotFoundError(f"train.init_state: no state file at {path} (a tune / rl run's state.safetensors)")
    state = load_tunable(path, model.config)
    upscaled = isinstance(state, UpscaledState)
    if upscaled != cfg.upscale.enabled:
        raise ValueError(f"train.init_state {path} holds {'an upscaled' if upscaled else 'a plain'} state but "
                         f"upscale.enabled is {str(cfg.upscale.enabled).lower()}; set it to "
                         f"{str(upscaled).lower()} (the state.safetensors of an upscaled run carries S~0 and R)")
    up, moves = cfg.upscale, []
    if up.train_r:
        moves.append(f"by gradient at upscale.r_lr={up.r_lr} (R's own peak lr, not scaled by optim.lr)"
                     if up.r_lr is not None else f"by gradient at the state's lr (optim.lr={cfg.optim.lr})")
    if cfg.dbp.enabled:
        moves.append("by DBP")
    if upscaled and moves:
        log.warning("train.init_state: the file's R keeps learning %s; the first Adam step moves every entry of R "
                    "by its lr and can undo the tuned state (one step at r_lr 0.01 took one from 0.94 to 0.76 "
                    "held-out). To keep R as tuned: upscale.train_r: false and dbp.enabled: false",
                    " and ".join(moves))
    return state


def make_optimizer(tunable: TimeState, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over every tunable, one group each (S0, S~0, R) with its own peak lr (``lr_scale``)."""
    up, o = cfg.upscale, cfg.optim
    groups = param_groups(tunable, o.lr, up.lr, up.r_lr, up.train_r)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class NonFiniteError(ValueError):
    """A NaN / inf loss, gradient or state: the run stops before anything non-finite is saved."""


def trainable(tunable: TimeState) -> list[torch.nn.Parameter]:
    return [p for p in tunable.parameters() if p.requires_grad]


def guarded_step(tunable: TimeState, opt: torch.optim.Optimizer, loss: float, cfg: RunConfig, step: int,
                 allreduce: AllReduce | None = None) -> bool:
    """All-reduce the gradients (data-parallel learners), clip, step, then DBP. Returns False when the step was
    skipped. A non-finite loss, gradient norm or updated tunable raises :class:`NonFiniteError`, or with
    ``train.on_nonfinite: skip`` leaves the tunables as they were and returns False."""
    params = trainable(tunable)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if allreduce is not None:   # the loss travels along, so a non-finite loss anywhere skips the step everywhere
        g0 = params[0].grad
        flat = allreduce(torch.cat([p.grad.reshape(-1) for p in params] + [g0.new_tensor([loss])]))
        *grads, loss_t = flat.split([p.numel() for p in params] + [1])
        for p, g in zip(params, grads):
            p.grad.copy_(g.view_as(p))
        loss = float(loss_t)
    norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
    before = [p.detach().clone() for p in params]
    bad = None if math.isfinite(loss) and math.isfinite(norm) else (
        f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}")
    if bad is None:
        opt.step()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            bad = "the tuned state after the optimiser step"
    if bad is None:
        if cfg.dbp.enabled:
            tunable.last_decor_loss = dbp_step(tunable, cfg.dbp.eta, cfg.dbp.kappa, allreduce)
        return True
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    if isinstance(tunable, UpscaledState):
        for lift in tunable.lifts:
            lift.take_recorded()
    if cfg.train.on_nonfinite == "skip":
        log.warning("step %d skipped: %s is not finite", step + 1, bad)
        return False
    raise diverged(f"{bad} is not finite", cfg, step)


def diverged(what: str, cfg: RunConfig, step: int, skippable: bool = True) -> NonFiniteError:
    """The one-line error of a run that went non-finite at ``step`` (0-based), naming ``optim.lr``."""
    fix = ", or set train.on_nonfinite: skip" if skippable and cfg.train.on_nonfinite == "error" else ""
    return NonFiniteError(f"step {step + 1}: {what} (optim.lr {cfg.optim.lr:g} too high?); the run stopped and no "
                          f"state was written from it. Lower optim.lr / grad_clip{fix}")


def check_skipped(skipped: int, steps: int, cfg: RunConfig) -> None:
    """Refuse to write the state of a run whose steps were mostly skipped (``train.max_skipped_share``)."""
    if skipped:
        log.warning("%d of %d steps were skipped (non-finite loss or gradient)", skipped, steps)
    share = cfg.train.max_skipped_share
    if skipped > share * steps:
        raise NonFiniteError(f"{skipped} of {steps} steps were skipped (non-finite loss or gradient), more than "
                             f"train.max_skipped_share {share:g} of them; no state was written (optim.lr "
                             f"{cfg.optim.lr:g} too high?). Lower optim.lr / grad_clip, or raise "
                             "train.max_skipped_share")


@torch.no_grad()
def check_tuned_output(model: RWKV7, tunable: TimeState, cfg: RunConfig, out: Path) -> None:
    """A finite state can still be diverged (|S0| ~ 1e20): two tokens from it must give finite logits."""
    idx = torch.zeros(1, 2, dtype=torch.long, device=model.emb.weight.device)
    logits, _ = model(idx, tunable.initial_state(model, 1))
    try:
        check_finite(logits)
    except NonFiniteLogits:
        raise NonFiniteError(f"the tuned state makes the model's logits NaN or inf (it diverged: optim.lr "
                             f"{cfg.optim.lr:g} too high?); nothing was written to {out / 'state.pth'}. Lower "
                             "optim.lr / grad_clip") from None


def state_norms(tunable: TimeState) -> dict[str, float]:
    out = {"state_norm": round(float(tunable.time_state.detach().norm()), 5)}
    if isinstance(tunable, UpscaledState):
        out["lifted_norm"] = round(float(tunable.lifted_state.detach().norm()), 5)
    if getattr(tunable, "last_decor_loss", None) is not None:
        out["decor_loss"] = round(float(tunable.last_decor_loss), 6)
    return out


def save_tuned(out: Path, tunable: TimeState, cfg: RunConfig, model: RWKV7, meta: dict) -> None:
    """The run's artefact (``upscale.save_tunable``) with the run's metadata: base model fingerprint, model and
    run config. A state that makes the logits non-finite is refused (:class:`NonFiniteError`)."""
    check_tuned_output(model, tunable, cfg, out)
    if isinstance(tunable, UpscaledState):
        log.warning("%s holds S0 only (the RWKV runtimes' format); the whole upscaled state (S0, S~0, R, feature "
                    "bases) is in %s", out / "state.pth", out / "state.safetensors")
    save_tunable(out, tunable, {"base_model": str(cfg.model.path),
                                "base_model_sha256_16": model_fingerprint(resolve_model_path(cfg.model.path)),
                                "model_config": model.config.__dict__, "run_config": cfg.model_dump(mode="json"),
                                **meta})

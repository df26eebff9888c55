"""Supervised state tuning through TRL's ``SFTTrainer`` (accelerate underneath).

    python -m rl_statetune.hf.sft --config configs/answer_format.yaml [--set train.steps=30] [--out DIR]
    accelerate launch --multi_gpu --num_processes 2 -m rl_statetune.hf.sft --config ...   # data-parallel
    (without GPUs ``--multi_gpu`` starts torchrun processes that accelerate runs as MULTI_CPU over gloo;
    ``--cpu`` would start one process)

The same run as ``rl-statetune tune`` (``rl_statetune.trainer.tune``): the same config, examples, tunable (plain
or upscaled state, DBP), AdamW groups and lr schedule (``lr_at``: geometric decay lr -> lr_final), gradient
clipping, batch order seed; the loss is TRL's completion-only cross-entropy over the target tokens (prompt and
target tokenised separately, exactly as ``rl_statetune.data.collate``). Only the state is trainable; the model is
``RWKV7ForCausalLM`` wrapping the frozen ``RWKV7``. With N processes each takes ``batch_size / N`` rows, so the
global batch is the config's. Writes into ``--out`` (default ``train.out_dir`` + ``-trl``): ``state.pth``,
``state.safetensors`` (with metadata and upscaled tensors), ``config.json`` (so ``RWKV7ForCausalLM.
from_pretrained(out)`` loads base + state) and ``result.json``; never the model weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("rl_statetune.hf.sft")


@dataclass
class SFTResult:
    out_dir: str
    steps: int
    final_loss: float
    first_loss: float
    acc_before: float
    acc_after: float
    seconds: float            # the whole run (load, tune, save, evaluate)
    train_seconds: float      # trainer.train() only
    tokens_per_s: float       # real (non-pad) tokens per second of train(), all processes together
    world_size: int
    tuned_parameters: int = 0  # numbers the optimiser updates (R and the lifted state included)
    artefact_bytes: int = 0    # the saved state / adapter files


def _artefact_bytes(out: Path) -> int:
    names = ("state.safetensors", "adapter_model.safetensors")
    return sum((out / n).stat().st_size for n in names if (out / n).exists())


def build_dataset(examples, tokenizer, max_len: int):
    """Pre-tokenised rows: ``input_ids`` = prompt ids + target ids (cut at ``max_len``) and ``completion_mask``
    marking the target, so that the loss covers exactly what ``rl_statetune.data.collate`` scores."""
    from datasets import Dataset

    rows = []
    for ex in examples:
        p, t = tokenizer.world.encode(ex.prompt), tokenizer.world.encode(ex.target)
        ids = (p + t)[:max_len]
        rows.append({"input_ids": ids, "completion_mask": ([0] * len(p) + [1] * len(t))[:max_len]})
    return Dataset.from_list(rows)


def _dist_world() -> tuple[int, int]:
    """(process index, number of processes) as accelerate sees them (``accelerate launch`` or a single process);
    starts the process group (gloo on CPU) when launched distributed."""
    from accelerate import PartialState

    st = PartialState(cpu=not torch.cuda.is_available())
    return st.process_index, st.num_processes


def make_callbacks(tunable, cfg):
    """DBP after each optimiser step (outside autograd); under DDP the R matrices are averaged over processes
    afterwards so every replica keeps the same R."""
    from transformers import TrainerCallback

    from rl_statetune.upscale import UpscaledState, dbp_step

    class DBPCallback(TrainerCallback):
        def __init__(self):
            self.last_decor = None

        def on_step_end(self, args, state, control, **kwargs):
            self.last_decor = dbp_step(tunable, cfg.dbp.eta, cfg.dbp.kappa)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                ws = torch.distributed.get_world_size()
                for lift in tunable.lifts:
                    torch.distributed.all_reduce(lift.decor.R.data)
                    lift.decor.R.data /= ws

    if cfg.dbp.enabled and isinstance(tunable, UpscaledState):
        return [DBPCallback()]
    return []


LOSS_PATHS = ("targets", "fused")


def state_sft_trainer_class():
    """``SFTTrainer`` whose loss projects only the target positions through the vocabulary (as our trainer
    does). TRL's own loss (``loss_path="fused"``) runs its chunked fused LM head; on a GPU with Triton that also
    scores the target positions only, but elsewhere (CPU) it scores every position over the full 65536-token
    vocabulary with entropy and top-1 statistics: ~20x slower on the quickstart (docs/hf.md)."""
    from trl import SFTTrainer

    class StateSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        labels=inputs["labels"], use_cache=False, return_logits=False,
                        num_items_in_batch=num_items_in_batch)
            loss = out.loss
            # like SFTTrainer / Trainer: num_items_in_batch counts every rank's tokens and DDP averages gradients
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                n = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += n
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, out) if return_outputs else loss

    return StateSFTTrainer


def lora_model(model, r: int, targets: str = "attention", alpha: int | None = None):
    """Wrap ``model`` (an ``RWKV7ForCausalLM``) with a PEFT LoRA adapter on its linear layers: ``targets``
    "attention" (receptance/key/value/output of every block) or "all" (those and the channel-mix key/value).
    The vocabulary head and the embedding stay frozen."""
    from peft import LoraConfig, get_peft_model

    patterns = {"attention": r".*\.att\.(receptance|key|value|output)",
                "all": r".*\.(att\.(receptance|key|value|output)|ffn\.(key|value))"}
    if targets not in patterns:
        raise ValueError(f"LoRA targets must be one of {sorted(patterns)}, got {targets!r}")
    conf = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, bias="none", target_modules=patterns[targets])
    return get_peft_model(model, conf)


def sft_tune(cfg, out_dir: str | Path | None = None, evaluate: bool = True, progress: bool = False,
             loss_path: str = "targets", lora: dict | None = None) -> SFTResult:
    """Tune ``cfg``'s state with TRL's SFTTrainer; see the module docstring.

    ``lora``: the PEFT baseline instead of state tuning, ``{"r": 4, "targets": "attention", "lr": 1e-2,
    "lr_final": 1e-4}`` (``lora_model``); the adapter is saved with PEFT's ``save_pretrained`` (adapter files
    only), and the schedule is ``lr_at`` with the LoRA's own lr / lr_final."""
    from trl import SFTConfig, SFTTrainer

    if loss_path not in LOSS_PATHS:
        raise ValueError(f"loss_path must be one of {LOSS_PATHS}, got {loss_path!r}")

    from rl_statetune.data import load_examples
    from rl_statetune.hf.modeling import RWKV7ForCausalLM
    from rl_statetune.hf.tokenization import world_tokenizer
    from rl_statetune.paths import resolve_model_path
    from rl_statetune.state import model_fingerprint, save_state
    from rl_statetune.run.heldout import held_out_accuracy
    from rl_statetune.run.setup import lr_at, make_tunable
    from rl_statetune.upscale import param_groups

    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    out = Path(out_dir or (cfg.train.out_dir.rstrip("/") + "-trl"))
    rank, world = _dist_world()
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} does not split over {world} processes")
    model = RWKV7ForCausalLM.from_pretrained(cfg.model.path, dtype=cfg.model.dtype, backend=cfg.model.wkv_backend)
    tok = world_tokenizer()
    train, held = load_examples(cfg.data)
    fmt = cfg.data.target_format if cfg.data.task == "synthetic" else None
    if lora is None:
        tunable = model.attach_state(make_tunable(model.rwkv, tok.world, train, cfg))
        if not tunable.time_state.requires_grad:
            raise RuntimeError("the tuned state must be trainable")
    else:
        tunable = None

    acc_before = float("nan")
    if evaluate and rank == 0:
        acc_before = held_out_accuracy(model.rwkv, tok.world, held, None, fmt, cfg.train.eval_max_new_tokens)
        log.info("held-out accuracy before tuning: %.3f (%d examples)", acc_before, len(held))

    steps = cfg.train.steps
    optim_cfg = cfg.optim
    if lora is None:
        up = cfg.upscale
        groups = param_groups(tunable, cfg.optim.lr, up.lr, up.r_lr, up.train_r)
    else:
        model = lora_model(model, lora["r"], lora.get("targets", "attention"), lora.get("alpha"))
        optim_cfg = cfg.optim.model_copy(update={"lr": lora.get("lr", 1e-2), "lr_final": lora.get("lr_final", 1e-4)})
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    opt = torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    for g in opt.param_groups:  # each group's peak lr (the lifted state's and R's may differ from the state's)
        g["lr"] = optim_cfg.lr * g.get("lr_scale", 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, optim_cfg) / optim_cfg.lr)
    n_tuned = sum(p.numel() for g in opt.param_groups for p in g["params"])
    on_cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out / "trainer"), max_steps=steps,
        per_device_train_batch_size=cfg.train.batch_size // world,
        gradient_accumulation_steps=cfg.train.grad_accum, max_grad_norm=cfg.optim.grad_clip,
        learning_rate=optim_cfg.lr, logging_steps=cfg.train.log_every, save_strategy="no", report_to="none",
        seed=cfg.train.seed, data_seed=cfg.train.seed, max_length=cfg.train.max_len, completion_only_loss=True,
        gradient_checkpointing=False, packing=False, padding_free=False, dataloader_drop_last=True,
        use_cpu=on_cpu, ddp_backend="gloo" if on_cpu and world > 1 else None, disable_tqdm=not progress,
        bf16=False, fp16=False, remove_unused_columns=True, dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding",
    )
    trainer_cls = state_sft_trainer_class() if loss_path == "targets" else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=build_dataset(train, tok, cfg.train.max_len),
                         processing_class=tok, optimizers=(opt, sched), callbacks=make_callbacks(tunable, cfg))
    t0 = time.time()
    result = trainer.train()
    train_seconds = time.time() - t0
    tokens = trainer.state.num_input_tokens_seen
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_loss = losses[-1] if losses else float(result.training_loss)
    first_loss = losses[0] if losses else float("nan")
    if world > 1 and tunable is not None and os.environ.get("RL_STATETUNE_DUMP_RANKS") == "1":
        # lets tests check that the replicas agree
        out.mkdir(parents=True, exist_ok=True)
        save_state(out / f"state.rank{rank}.pth", tunable.time_state)

    acc_after = float("nan")
    if rank == 0 and lora is not None:
        model.save_pretrained(out)  # PEFT: adapter_config.json + adapter_model.safetensors
        if evaluate:  # the adapter sits inside model.rwkv's linear layers now
            acc_after = held_out_accuracy(model.get_base_model().rwkv, tok.world, held, None, fmt,
                                          cfg.train.eval_max_new_tokens)
    elif rank == 0:
        meta = {"base_model_sha256_16": model_fingerprint(resolve_model_path(cfg.model.path)),
                "run_config": cfg.model_dump(mode="json"), "steps": steps, "final_loss": final_loss,
                "trainer": "trl.SFTTrainer"}
        model.save_pretrained(out, metadata=meta)  # config.json + state.safetensors + state.pth (no weights)
        if evaluate:
            acc_after = held_out_accuracy(model.rwkv, tok.world, held, tunable, fmt, cfg.train.eval_max_new_tokens)
            log.info("held-out accuracy: %.3f before -> %.3f after tuning", acc_before, acc_after)
    res = SFTResult(str(out), steps, float(final_loss), float(first_loss), acc_before, acc_after,
                    time.time() - t_start, train_seconds, tokens / max(train_seconds, 1e-9), world, n_tuned,
                    _artefact_bytes(out) if rank == 0 else 0)
    if rank == 0:
        (out / "result.json").write_text(json.dumps(res.__dict__, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rl_statetune.config import load_config

    ap = argparse.ArgumentParser(prog="python -m rl_statetune.hf.sft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None, help="output folder (default: train.out_dir + '-trl')")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--loss", choices=LOSS_PATHS, default="targets",
                    help="targets: project only target positions (default); fused: TRL's own fused-LM-head loss")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(a.config, overrides=a.set)
    res = sft_tune(cfg, a.out, evaluate=not a.no_eval, progress=a.progress, loss_path=a.loss)
    if _dist_world()[0] == 0:
        acc = "" if math.isnan(res.acc_after) else \
            f"held-out accuracy: before {res.acc_before:.3f} -> after {res.acc_after:.3f}   "
        print(f"\nstate written to {res.out_dir}/state.pth and state.safetensors\n{acc}({res.steps} steps, "
              f"final loss {res.final_loss:.4f}, train {res.train_seconds:.1f} s, {res.tokens_per_s:.0f} tokens/s, "
              f"{res.world_size} process(es), {res.seconds:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Outcome-reward baseline: TRL's ``GRPOTrainer`` on the tuned state, reward = answer correctness, no guide.

    python -m rl_statetune.hf.grpo --config configs/answer_format.yaml [--generations 4] [--set train.steps=30]

The policy is ``RWKV7ForCausalLM`` with a zero ``TimeState`` attached (the only trainable tensor). Each step
samples ``--generations`` completions per prompt (temperature ``--temperature``, ``max_completion_length`` =
``train.eval_max_new_tokens``), scores each 1.0 if its first line states the right answer in the task's format
(``rl_statetune.synthetic.extract_answer``; jsonl tasks: exact first-line match) and 0.0 otherwise, and takes
TRL's GRPO step (group-normalised advantages, no KL reference: beta 0). The optimiser, lr schedule and batch
(``train.batch_size`` completions per step) are the supervised run's. This is the baseline beside the guided
single-step alignment RL (``rl-statetune rl``): outcome reward only, one scalar per sampled completion.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("rl_statetune.hf.grpo")


@dataclass
class GRPOResult:
    out_dir: str
    steps: int
    acc_before: float
    acc_after: float
    mean_reward_first: float
    mean_reward_last: float
    seconds: float
    train_seconds: float
    tuned_parameters: int
    artefact_bytes: int


def correctness_reward(fmt: str | None):
    """``reward(prompts, completions, answer, target, **_) -> [1.0 | 0.0]`` for TRL (dataset columns arrive as
    keyword lists)."""
    from rl_statetune.synthetic import extract_answer

    def reward(prompts, completions, answer=None, target=None, **_):
        out = []
        for i, c in enumerate(completions):
            if fmt is not None:
                out.append(float(extract_answer(c, fmt) == int(answer[i])))
            else:
                out.append(float(c.strip().split("\n")[0] == target[i].strip().split("\n")[0]))
        return out

    reward.__name__ = "correct"
    return reward


def state_grpo_trainer_class():
    """``GRPOTrainer`` whose per-token log-probabilities come from the completion positions' logits only
    (``logits_to_keep``). TRL's own path runs its fused LM head, which off GPU scores every position of prompt and
    completion over the whole vocabulary (see ``rl_statetune.hf.sft.state_sft_trainer_class``)."""
    from trl import GRPOTrainer

    class StateGRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **unused):
            if any(v is not None for v in unused.values()):
                raise NotImplementedError("RWKV7ForCausalLM takes text only")
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        logits_to_keep=logits_to_keep + 1)
            logp = (out.logits[:, :-1].float() / self.temperature).log_softmax(-1)
            targets = input_ids[:, -logits_to_keep:]
            logps = logp.gather(-1, targets[..., None]).squeeze(-1)
            entropies = -(logp.exp() * logp).sum(-1) if compute_entropy else None
            return logps, entropies, None

    return StateGRPOTrainer


def grpo_tune(cfg, out_dir: str | Path | None = None, generations: int = 4, temperature: float = 1.0,
              evaluate: bool = True) -> GRPOResult:
    from datasets import Dataset
    from trl import GRPOConfig

    from rl_statetune.data import load_examples
    from rl_statetune.hf.modeling import RWKV7ForCausalLM
    from rl_statetune.hf.sft import _artefact_bytes, _dist_world
    from rl_statetune.hf.tokenization import world_tokenizer
    from rl_statetune.state import TimeState
    from rl_statetune.run.heldout import held_out_accuracy
    from rl_statetune.run.setup import lr_at

    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    out = Path(out_dir or (cfg.train.out_dir.rstrip("/") + "-grpo"))
    rank, world = _dist_world()
    model = RWKV7ForCausalLM.from_pretrained(cfg.model.path, dtype=cfg.model.dtype, backend=cfg.model.wkv_backend)
    tok = world_tokenizer(padding_side="left")
    train, held = load_examples(cfg.data)
    fmt = cfg.data.target_format if cfg.data.task == "synthetic" else None
    tunable = model.attach_state(TimeState(model.rwkv.config))
    acc_before = float("nan")
    if evaluate and rank == 0:
        acc_before = held_out_accuracy(model.rwkv, tok.world, held, None, fmt, cfg.train.eval_max_new_tokens)

    steps = cfg.train.steps
    opt = torch.optim.AdamW([tunable.time_state], lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, cfg.optim) / cfg.optim.lr)
    per_device = cfg.train.batch_size // world
    if per_device % generations:
        raise ValueError(f"batch of {per_device} completions per process is not a multiple of {generations}")
    args = GRPOConfig(
        output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=per_device,
        num_generations=generations, max_completion_length=cfg.train.eval_max_new_tokens, temperature=temperature,
        beta=0.0, learning_rate=cfg.optim.lr, max_grad_norm=cfg.optim.grad_clip, logging_steps=cfg.train.log_every,
        save_strategy="no", report_to="none", seed=cfg.train.seed, use_cpu=not torch.cuda.is_available(),
        bf16=False, fp16=False, gradient_checkpointing=False, disable_tqdm=True, remove_unused_columns=False,
        shuffle_dataset=True,
    )
    data = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer, "target": e.target} for e in train])
    trainer = state_grpo_trainer_class()(model=model, reward_funcs=correctness_reward(fmt), args=args,
                                         train_dataset=data, processing_class=tok, optimizers=(opt, sched))
    t0 = time.time()
    trainer.train()
    train_seconds = time.time() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    acc_after = float("nan")
    if rank == 0:
        model.save_pretrained(out, metadata={"trainer": "trl.GRPOTrainer", "steps": steps,
                                             "run_config": cfg.model_dump(mode="json")})
        if evaluate:
            acc_after = held_out_accuracy(model.rwkv, tok.world, held, tunable, fmt, cfg.train.eval_max_new_tokens)
    res = GRPOResult(str(out), steps, acc_before, acc_after, rewards[0] if rewards else float("nan"),
                     rewards[-1] if rewards else float("nan"), time.time() - t_start, train_seconds,
                     tunable.time_state.numel(), _artefact_bytes(out) if rank == 0 else 0)
    if rank == 0:
        (out / "result.json").write_text(json.dumps(res.__dict__, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rl_statetune.config import load_config

    ap = argparse.ArgumentParser(prog="python -m rl_statetune.hf.grpo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = grpo_tune(load_config(a.config, overrides=a.set), a.out, a.generations, a.temperature, not a.no_eval)
    if _is_main():
        print(f"\nGRPO state written to {res.out_dir}/state.safetensors\nheld-out accuracy: before "
              f"{res.acc_before:.3f} -> after {res.acc_after:.3f}   (reward {res.mean_reward_first:.3f} -> "
              f"{res.mean_reward_last:.3f}, {res.steps} steps, train {res.train_seconds:.0f} s)")
    return 0


def _is_main() -> bool:
    from rl_statetune.hf.sft import _dist_world

    return _dist_world()[0] == 0


if __name__ == "__main__":
    raise SystemExit(main())

"""State tuning through TRL's SFTTrainer (rl_statetune.hf.sft): only the state learns, the loss is our
completion-only loss exactly, the loss falls, the artefact is a state file; and `accelerate launch` runs it on two
CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

pytest.importorskip("trl")

from rl_statetune.config import parse_config  # noqa: E402
from rl_statetune.state import load_state  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def small_cfg(tmp_path, **train):
    data = {"model": {"path": "embedded"},
            "data": {"task": "synthetic", "target_format": "sentence", "train_size": 64, "eval_size": 16},
            "train": {"steps": 8, "batch_size": 8, "log_every": 1, "out_dir": str(tmp_path / "run"), **train},
            "optim": {"lr": 1.0, "lr_final": 0.01}}
    return data


def make_trainer(cfg, loss_path):
    """The SFTTrainer exactly as sft_tune builds it, for the loss checks (no training)."""
    from trl import SFTConfig, SFTTrainer

    from rl_statetune.data import load_examples
    from rl_statetune.hf import RWKV7ForCausalLM, world_tokenizer
    from rl_statetune.hf.sft import build_dataset, state_sft_trainer_class

    model = RWKV7ForCausalLM.from_pretrained("embedded")
    tok = world_tokenizer()
    train, _ = load_examples(cfg.data)
    state = model.new_state()
    with torch.no_grad():  # a non-zero state, so the check is not at the frozen model only
        state.time_state.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    args = SFTConfig(output_dir="/tmp/unused", max_steps=1, per_device_train_batch_size=8, report_to="none",
                     completion_only_loss=True, gradient_checkpointing=False, use_cpu=True, save_strategy="no",
                     max_length=cfg.train.max_len)
    cls = state_sft_trainer_class() if loss_path == "targets" else SFTTrainer
    trainer = cls(model=model, args=args, train_dataset=build_dataset(train, tok, cfg.train.max_len),
                  processing_class=tok)
    return trainer, model, state, train, tok


@pytest.mark.parametrize("loss_path", ["targets", "fused"])
def test_trl_loss_is_our_target_loss(tmp_path, loss_path):
    from rl_statetune.data import collate
    from rl_statetune.trainer import target_loss

    cfg = parse_config(small_cfg(tmp_path))
    trainer, model, state, train, tok = make_trainer(cfg, loss_path)
    rows = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(rows)
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # prompts are masked out
    model.train()
    ours = target_loss(model.rwkv, state, collate(train[:8], tok.world, cfg.train.max_len))
    theirs = trainer.compute_loss(trainer.model, batch)
    # TRL's fused head accumulates the log-sum-exp in chunks and lands closer to a float64 reference than
    # F.cross_entropy in float32 (measured 1.5e-6 vs 8e-5 per token); one mis-masked token would move the mean
    # by > 1e-3
    tol = 1e-6 if loss_path == "targets" else 1e-4
    torch.testing.assert_close(theirs, ours, rtol=0, atol=tol)


def test_sft_tunes_only_the_state_loss_falls_and_writes_a_state_file(tmp_path):
    from rl_statetune.hf.sft import sft_tune

    cfg = parse_config(small_cfg(tmp_path))
    res = sft_tune(cfg, tmp_path / "out")
    out = Path(res.out_dir)
    hist = json.loads((out / "result.json").read_text())
    assert hist["steps"] == 8 and res.world_size == 1
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert {"state.pth", "state.safetensors", "config.json", "result.json"} <= set(files)
    assert not any(f.endswith((".bin",)) or f == "model.safetensors" for f in files)
    assert (out / "state.safetensors").stat().st_size < 200_000  # 6 x 2 x 32 x 32 floats + metadata
    sf = load_state(out / "state.safetensors")
    assert sf.time_state.abs().sum() > 0 and sf.metadata["trainer"] == "trl.SFTTrainer"
    assert torch.equal(load_state(out / "state.pth").time_state, sf.time_state)
    # the loss falls and the tuned state does what the task asks (the frozen model writes "#### N")
    assert res.final_loss < 0.5 * first_logged_loss(out)
    assert res.acc_before == 0.0 and res.acc_after >= 0.75


def first_logged_loss(out: Path) -> float:
    # the trainer's log history is not kept on disk (save_strategy "no"); sft_tune records the first loss
    return json.loads((out / "result.json").read_text())["first_loss"]


def test_only_state_parameters_reach_the_optimizer(tmp_path):
    cfg = parse_config(small_cfg(tmp_path))
    trainer, model, state, *_ = make_trainer(cfg, "targets")
    trainer.create_optimizer()
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(state.time_state)}
    assert all(not p.requires_grad for p in model.rwkv.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    """A real `accelerate launch` of two processes (gloo); each takes half of every batch."""
    conf = tmp_path / "cfg.yaml"
    conf.write_text(yaml.safe_dump(small_cfg(tmp_path, steps=8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RL_STATETUNE_DUMP_RANKS": "1"}
    # on a machine without GPUs, --multi_gpu launches torchrun processes that accelerate runs as MULTI_CPU with gloo
    # (--cpu would start a single process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "rl_statetune.hf.sft", "--config", str(conf), "--out", str(tmp_path / "ddp"), "--no-eval"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 8
    assert res["final_loss"] < 0.7 * res["first_loss"]
    assert load_state(tmp_path / "ddp" / "state.safetensors").time_state.abs().sum() > 0
    # both replicas ended with the same state (DDP all-reduced every gradient)
    ranks = [load_state(tmp_path / "ddp" / f"state.rank{r}.pth").time_state for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])

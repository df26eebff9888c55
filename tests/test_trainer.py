"""End-to-end state tuning on a tiny world-vocabulary model: the loss falls, runs resume exactly, CLI works."""

from __future__ import annotations

import json

import pytest
import torch

import rl_statetune.trainer as trainer
from rl_statetune.cli import main as cli_main
from rl_statetune.config import parse_config
from rl_statetune.run.setup import lr_at
from rl_statetune.state import load_state


def make_cfg(ckpt, out, train_size=64, **train):
    return parse_config({
        "model": {"path": str(ckpt)},
        "data": {"task": "synthetic", "train_size": train_size, "eval_size": 8},
        "train": {"steps": 8, "batch_size": 8, "log_every": 2, "ckpt_every": 3, "out_dir": str(out), **train},
        "optim": {"lr": 0.3, "lr_final": 0.03},
    })


def read_losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tuning_lowers_the_target_loss(tiny_world_ckpt, tmp_path):
    # one batch of 16 examples seen every step: the loss on it must fall
    cfg = make_cfg(tiny_world_ckpt, tmp_path, train_size=16, steps=12, batch_size=16)
    res = trainer.tune(cfg, progress=False, evaluate=False)
    losses = read_losses(tmp_path)
    assert losses[-1] < losses[0] - 0.1, losses
    state = load_state(tmp_path / "state.safetensors")
    assert state.metadata["steps"] == 12 and len(state.metadata["base_model_sha256_16"]) == 16
    assert torch.equal(state.time_state, load_state(tmp_path / "state.pth").time_state)
    assert res.final_loss == pytest.approx(losses[-1], abs=1e-4)


def test_resume_continues_bit_for_bit(tiny_world_ckpt, tmp_path, monkeypatch):
    full = tmp_path / "full"
    trainer.tune(make_cfg(tiny_world_ckpt, full), progress=False, evaluate=False)

    part = tmp_path / "part"
    real_loss, calls = trainer.target_loss, {"n": 0}

    def crash_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_loss(*a, **k)

    monkeypatch.setattr(trainer, "target_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        trainer.tune(make_cfg(tiny_world_ckpt, part), progress=False, evaluate=False)
    assert torch.load(part / "checkpoint.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(trainer, "target_loss", real_loss)
    trainer.tune(make_cfg(tiny_world_ckpt, part), resume=True, progress=False, evaluate=False)
    assert torch.equal(load_state(part / "state.pth").time_state, load_state(full / "state.pth").time_state)


def test_resume_refuses_a_different_config(tiny_world_ckpt, tmp_path):
    trainer.tune(make_cfg(tiny_world_ckpt, tmp_path, steps=3), progress=False, evaluate=False)
    with pytest.raises(ValueError, match=r"another configuration \(train.steps: 3 -> 4\)"):
        trainer.tune(make_cfg(tiny_world_ckpt, tmp_path, steps=4), resume=True, progress=False, evaluate=False)


def test_lr_schedule_is_geometric_from_lr_to_lr_final():
    cfg = parse_config({"optim": {"lr": 1.0, "lr_final": 0.01, "warmup_steps": 2}}).optim
    lrs = [lr_at(s, 12, cfg) for s in range(12)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.01)
    ratios = [b / a for a, b in zip(lrs[2:], lrs[3:])]
    assert ratios == pytest.approx([0.01 ** (1 / 9)] * 9)


def test_cli_tune_and_generate(tiny_world_ckpt, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_world_ckpt}\ndata:\n  train_size: 16\n  eval_size: 4\n"
                   f"train:\n  steps: 2\n  batch_size: 4\n  out_dir: {tmp_path / 'run'}\n")
    assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy: before" in out and (tmp_path / "run/state.pth").exists()
    assert cli_main(["generate", "--model", str(tiny_world_ckpt), "--state", str(tmp_path / "run/state.pth"),
                     "--prompt", "Q: hi\nA:", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Q: hi\nA:")
    assert cli_main(["tune", "--config", str(cfg), "--set", "train.stepz=1"]) == 2
    assert "train.stepz" in capsys.readouterr().err

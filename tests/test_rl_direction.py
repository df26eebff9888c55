"""RL learns in the right direction, on every tunable.

* On the embedded model, the task's own rationales in the "sentence" answer format as a scripted guide and the
  token-match reward: a few policy-gradient steps on the state switch the answer format, and held-out accuracy
  (greedy generation, scored by the task's rule: independent of the reward code) goes from 0 to 1. Flipping the
  advantage's sign or shifting the match targets by one position makes this test fail.
* With ``upscale`` + ``dbp``, the learner trains S0, S~0 and R, DBP moves R, the checkpoint resumes bit for bit,
  and the saved artefact loads back as the same upscaled state.
"""

from __future__ import annotations

import pytest
import torch
from char_guide import CrashingGuide
from rl_statetune_guides import build_guide

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.state import load_state
from rl_statetune.upscale import UpscaledState, load_tunable


def test_rl_on_the_state_raises_heldout_accuracy(tmp_path):
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"},
        "data": {"target_format": "sentence", "train_size": 16, "eval_size": 12},
        "guide": {"task_rationales": True},
        "reward": {"kind": "match", "samples": 8},
        "pg": {"advantage": "batch"},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": 6, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path), "eval_max_new_tokens": 40},
    })
    res = run_rl(cfg, progress=False)
    assert res.acc_before <= 0.1, res.acc_before          # the frozen model answers "#### N", not "The answer is N."
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)
    assert res.rewards[-1] > res.rewards[0]


def upscaled_cfg(ckpt, out, **over) -> RLConfig:
    base = {
        "model": {"path": str(ckpt)},
        "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True, "options": {"score_logprob": -1.0}},
        "reward": {"kind": "reverse_kl", "samples": 2},
        "optim": {"lr": 0.1},
        "upscale": {"enabled": True, "features": 12, "support": "random", "r_lr": 0.05},
        "dbp": {"enabled": True, "eta": 0.05, "subsample": 0.5},
        "train": {"steps": 4, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "out_dir": str(out), "eval": False},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return RLConfig.model_validate(base)


def test_rl_tunes_s0_lifted_state_and_r_and_resumes_bit_for_bit(tiny_world_ckpt, tmp_path):
    cfg = upscaled_cfg(tiny_world_ckpt, tmp_path / "a")
    run_rl(cfg, progress=False)
    full = load_tunable(tmp_path / "a" / "state.safetensors", _model_config(tiny_world_ckpt))
    assert isinstance(full, UpscaledState)
    R = torch.stack([lift.decor.R.detach() for lift in full.lifts])
    eye = torch.eye(R.shape[-1]).expand_as(R)
    assert full.time_state.abs().sum() > 0 and full.lifted_state.abs().sum() > 0
    assert (R - eye).abs().max() > 1e-4                     # gradient + DBP moved R away from the identity
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert {"time_state", "lifted_state"} <= set(ck["tunable"]) and any(".decor.R" in k for k in ck["tunable"])
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert all('"decor_loss"' in line and '"lifted_norm"' in line for line in lines)

    # crash in step 3 (checkpoint at step 2), resume: every tunable equals the uninterrupted run's
    cfg_b = upscaled_cfg(tiny_world_ckpt, tmp_path / "b")
    with pytest.raises(RuntimeError, match="guide went away"):
        inner = build_guide(resolve_guide_config(cfg_b.guide, cfg_b.data, tmp_path / "b"))
        run_rl(cfg_b, progress=False, guide=CrashingGuide(inner, after=2))
    run_rl(cfg_b, resume=True, progress=False)
    a, b = (load_state(tmp_path / x / "state.safetensors") for x in "ab")
    assert torch.equal(a.time_state, b.time_state)
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k


def test_dbp_alone_moves_r_when_r_is_not_trained(tiny_world_ckpt, tmp_path):
    cfg = upscaled_cfg(tiny_world_ckpt, tmp_path, upscale={"train_r": False}, train={"steps": 2})
    run_rl(cfg, progress=False)
    up = load_tunable(tmp_path / "state.safetensors", _model_config(tiny_world_ckpt))
    R = torch.stack([lift.decor.R.detach() for lift in up.lifts])
    assert (R - torch.eye(R.shape[-1]).expand_as(R)).abs().max() > 1e-5

    no_dbp = upscaled_cfg(tiny_world_ckpt, tmp_path / "n", upscale={"train_r": False}, dbp={"enabled": False},
                          train={"steps": 2})
    run_rl(no_dbp, progress=False)
    up = load_tunable(tmp_path / "n" / "state.safetensors", _model_config(tiny_world_ckpt))
    R = torch.stack([lift.decor.R.detach() for lift in up.lifts])
    assert torch.equal(R, torch.eye(R.shape[-1]).expand_as(R))


def _model_config(ckpt):
    from rl_statetune.checkpoint import load_model

    return load_model(ckpt).config

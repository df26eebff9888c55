"""The single-process RL loop: outputs, checkpoint/resume, per-component throughput, CLI entry point."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from char_guide import CrashingGuide
from rl_statetune_guides import Guide, build_guide

from rl_statetune.cli import main as cli_main
from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.rl.driver import run_rl
from rl_statetune.state import load_state


def small_cfg(ckpt, out, kind="match", **train) -> RLConfig:
    return RLConfig.model_validate({
        "model": {"path": str(ckpt)},
        "data": {"train_size": 8, "eval_size": 4},
        # the dataset guide scores every whitespace piece -1: reverse-KL rewards change a random model's state
        "guide": {"task_rationales": True, "options": {"score_logprob": -1.0}},
        "reward": {"kind": kind, "samples": 2},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "out_dir": str(out),
                  "eval": False, **train}})


def test_run_writes_state_metrics_and_resumes_exactly(tiny_world_ckpt, tmp_path):
    a = run_rl(small_cfg(tiny_world_ckpt, tmp_path / "a", "reverse_kl", steps=4), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    for key in ("reward", "guide_tokens_per_s", "learner_tokens_per_s", "learner_wait_s", "match_argmax"):
        assert key in lines[-1]
    assert lines[-1]["guide_tokens_per_s"] > 0 and lines[-1]["learner_tokens_per_s"] > 0
    assert len(a.rewards) == 4 and (tmp_path / "a" / "state.safetensors").exists()
    full = load_state(tmp_path / "a" / "state.pth").time_state
    assert full.abs().sum() > 0

    # crash in step 3 (the checkpoint is at step 2), then resume: the same run as the uninterrupted one
    cfg_b = small_cfg(tiny_world_ckpt, tmp_path / "b", "reverse_kl", steps=4)
    with pytest.raises(RuntimeError, match="guide went away"):
        inner = build_guide(resolve_guide_config(cfg_b.guide, cfg_b.data, tmp_path / "b"))
        run_rl(cfg_b, progress=False, guide=CrashingGuide(inner, after=2))
    b = run_rl(cfg_b, resume=True, progress=False)
    assert b.rewards == a.rewards
    torch.testing.assert_close(load_state(tmp_path / "b" / "state.pth").time_state, full, rtol=0, atol=0)


def test_resume_refuses_another_config(tiny_world_ckpt, tmp_path):
    run_rl(small_cfg(tiny_world_ckpt, tmp_path, steps=2), progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(train.seed: 0 -> 5\)"):
        run_rl(small_cfg(tiny_world_ckpt, tmp_path, steps=2, seed=5), resume=True, progress=False)


def test_config_errors_are_clear(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"guide": {"task_rationales": True, "config": "x.yaml"}}))
    with pytest.raises(ValueError, match="at most one of guide.config"):
        load_rl_config(p)
    p.write_text(yaml.safe_dump({"reward": {"kind": "match"}}))         # no guide: only the verifier runs without
    with pytest.raises(ValueError, match="match needs a guide"):
        load_rl_config(p)
    p.write_text(yaml.safe_dump({"reward": {"terms": {"match": 1.0, "reverse_kl": 1.0}},
                                 "guide": {"task_rationales": True}}))
    with pytest.raises(ValueError, match="at most one of"):
        load_rl_config(p)
    p.write_text(yaml.safe_dump({"reward": {"terms": {"verifier": 1.0}}}))
    assert load_rl_config(p).reward.rollout_terms == {"verifier": 1.0}
    p.write_text(yaml.safe_dump({"guide": {"task_rationales": True}, "reward": {"kind": "nope"}}))
    with pytest.raises(ValueError, match="reward.kind"):
        load_rl_config(p)
    p.write_text(yaml.safe_dump({"guide": {"task_rationales": True},                 # kind would be lost
                                 "reward": {"kind": "reverse_kl", "terms": {"verifier": 1.0}}}))
    with pytest.raises(ValueError, match="reward.kind .reverse_kl. and reward.terms are both set"):
        load_rl_config(p)
    cfg = load_rl_config(p, ["reward.kind=null"])          # a dumped config with terms loads again as it was
    assert RLConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_cli_single_process(tiny_world_ckpt, tmp_path, capsys):
    p = tmp_path / "rl.yaml"
    p.write_text(yaml.safe_dump(small_cfg(tiny_world_ckpt, tmp_path / "out", steps=1).model_dump(mode="json")))
    assert cli_main(["rl", "--config", str(p), "--no-progress"]) == 0
    assert "reward" in capsys.readouterr().out and (tmp_path / "out" / "state.pth").exists()


def test_guide_text_is_cut_at_stop_strings_and_max_chars():
    from rl_statetune.rl.config import GuideSection
    from rl_statetune.rl.cot import clean_guide_text

    g = GuideSection(task_rationales=True, cot={"stop": ["\n", "###"], "max_chars": 8}).cot
    assert clean_guide_text("  Tom has 7.\nMore", g) == "Tom has"
    assert clean_guide_text("ab ### cd", g) == "ab"
    assert clean_guide_text("abc", GuideSection(task_rationales=True).cot) == "abc"


class TimedGuide(Guide):
    """The task-rationale guide, recording when each generate call starts."""

    def __init__(self, inner: Guide):
        self.inner, self.starts = inner, []

    def generate(self, prompts, max_tokens=256, temperature=0.0):
        self.starts.append(time.monotonic())
        return self.inner.generate(prompts, max_tokens, temperature)

    def score(self, prompts, continuations, top_k=0):
        return self.inner.score(prompts, continuations, top_k)


def test_the_guide_writes_the_next_batch_while_the_learner_trains(tiny_world_ckpt, tmp_path, monkeypatch):
    """The guide's call for batch t+1 starts before the learner's step t ends (each step made to last 0.2 s)."""
    from rl_statetune.rl.learner import Learner

    ends, real = [], Learner.train_step

    def slow_step(self, *a, **k):
        m = real(self, *a, **k)
        time.sleep(0.2)
        ends.append(time.monotonic())
        return m

    monkeypatch.setattr(Learner, "train_step", slow_step)
    cfg = small_cfg(tiny_world_ckpt, tmp_path, "match", steps=4)
    guide = TimedGuide(build_guide(resolve_guide_config(cfg.guide, cfg.data, tmp_path)))
    run_rl(cfg, progress=False, guide=guide)
    assert len(guide.starts) == 4 and len(ends) == 4
    assert all(guide.starts[t + 1] < ends[t] for t in range(3)), (guide.starts, ends)


class StartupGuide(TimedGuide):
    """A guide whose first call takes ``startup`` seconds longer (an engine warming up), later calls ``each``."""

    def __init__(self, inner: Guide, startup: float, each: float):
        super().__init__(inner)
        self.startup, self.each = startup, each

    def generate(self, prompts, max_tokens=256, temperature=0.0):
        time.sleep(self.each + (self.startup if not self.starts else 0.0))
        return super().generate(prompts, max_tokens, temperature)


def test_the_guide_start_up_is_told_apart_from_the_steady_idle_share(tiny_world_ckpt, tmp_path, monkeypatch):
    """A 1.5 s first guide call, then 0.05 s calls against learner steps of at least 0.2 s: the first wait holds
    the start-up; after it the prefetch keeps the learners fed, while the whole run's share looks idle-bound."""
    from rl_statetune.rl.driver import steady_idle_share
    from rl_statetune.rl.learner import Learner

    real = Learner.train_step

    def slow_step(self, *a, **k):
        t0 = time.monotonic()
        m = real(self, *a, **k)
        time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))
        return m

    monkeypatch.setattr(Learner, "train_step", slow_step)
    cfg = small_cfg(tiny_world_ckpt, tmp_path, "match", steps=6)
    guide = StartupGuide(build_guide(resolve_guide_config(cfg.guide, cfg.data, tmp_path)), 1.5, 0.05)
    res = run_rl(cfg, progress=False, guide=guide)
    assert 1.5 <= res.first_wait_s <= 3.0, res
    assert res.loop_s >= res.first_wait_s + 5 * 0.2, res
    assert steady_idle_share(res) <= 0.15, res
    assert res.learner_wait_s / res.loop_s >= 0.35, res

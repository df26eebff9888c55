"""The benchmark scripts' config overrides still validate against the configs they change (a benchmark row that
no longer loads fails only when somebody runs it, hours later)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rl_statetune.rl.config import load_rl_config

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_cost_rollout_row_is_the_verifier_alone():
    sc = script("step_cost")
    cfg = load_rl_config(sc.DEMO, sc.ROLLOUT)
    assert cfg.reward.cot_term is None and cfg.reward.rollout_terms == {"verifier": 1.0}
    assert cfg.reward.samples == 4 and cfg.reward.max_new_tokens == 48
    assert load_rl_config(sc.DEMO).reward.cot_term == "match"     # the rl row: the demo as it is


@pytest.mark.parametrize("row", sorted(script("rl_vs_imitation").RL_ROWS))
def test_every_rl_row_of_rl_vs_imitation_validates(row, tmp_path):
    bench = script("rl_vs_imitation")
    base = load_rl_config(str(ROOT / "configs" / "rl_quick.yaml"))
    cfg = bench.rl_variant(base, row, 3, 5, tmp_path)
    guide, reward = bench.RL_ROWS[row]
    assert cfg.train.seed == 3 and cfg.train.steps == 5 and not cfg.train.eval
    assert cfg.reward.guide_in_group == reward.get("guide_in_group", False)
    assert cfg.guide.self_guide is not None if "self_guide" in guide else cfg.guide.self_guide is None


def test_the_task_guide_config_is_the_benchmarks_row(tmp_path):
    """configs/rl_task_guide.yaml is what benchmarks/rl_vs_imitation.py measured as ``grpo+fix+guide-taskguide``
    at 200 steps and peak lr 0.5 (the figure its comment and docs/rl.md quote): the same config, section by
    section, apart from the run's own folder and held-out pass."""
    bench = script("rl_vs_imitation")
    base = load_rl_config(str(ROOT / "configs" / "rl_quick.yaml"), ["optim.lr=0.5"])
    want = bench.rl_variant(base, "grpo+fix+guide-taskguide", 0, 200, tmp_path).model_dump(mode="json")
    got = load_rl_config(str(ROOT / "configs" / "rl_task_guide.yaml")).model_dump(mode="json")
    for d in (want, got):
        d["train"].pop("out_dir"), d["train"].pop("eval")
    assert got == want

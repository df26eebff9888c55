"""The quickstarts, shortened, through the real trainer: state tuning must lift the held-out accuracy.

The held-out score is the trainer's own (greedy completions, ``synthetic.extract_answer`` in the target format),
so these fail when answer extraction, generation, the tuned state's use or the data wiring break."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_statetune import synthetic as syn
from rl_statetune.config import load_config
from rl_statetune.paths import EMBEDDED_MODELS
from rl_statetune.trainer import tune

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_answer_format_held_out_accuracy_rises(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(CONFIGS / "answer_format.yaml",
                      overrides=[f"train.out_dir={tmp_path}", "train.steps=12", "data.eval_size=24"])
    res = tune(cfg, progress=False)
    # frozen: it answers "#### N", not the target "The answer is N."; tuned: the target format, arithmetic right
    assert res.acc_before <= 0.1, res
    assert res.acc_after >= 0.9, res


@pytest.mark.skipif(not EMBEDDED_MODELS["reason"].exists(),
                    reason=f"{EMBEDDED_MODELS['reason'].name} is not built (scripts/pretrain_embedded.py)")
def test_quickstart_tuned_state_switches_reasoning_on(tmp_path):
    """configs/quickstart.yaml: with no header the frozen embedded:reason model answers directly and mostly
    wrongly; state tuning on step-by-step solutions makes it reason (more tokens per answer) and be right."""
    from rl_statetune.generation import generate
    from rl_statetune.run.setup import start_run
    from rl_statetune.state import initial_state_fn
    from rl_statetune.upscale import load_tunable

    torch.set_num_threads(2)
    cfg = load_config(CONFIGS / "quickstart.yaml",
                      overrides=[f"train.out_dir={tmp_path}", "train.steps=20", "data.eval_size=32"])
    res = tune(cfg, progress=False)
    assert res.acc_before <= 0.5, res
    assert res.acc_after >= 0.75 and res.acc_after >= res.acc_before + 0.3, res
    assert res.tokens_after >= 3 * res.tokens_before, res   # test-time compute: the reasoning is written out
    model, tok, _, held = start_run(cfg)
    state = load_tunable(tmp_path / "state.pth", model.config)
    outs = generate(model, tok, [e.prompt for e in held[:16]], 64, init_state=initial_state_fn(model, state))
    assert sum(map(syn.is_reasoning, outs)) >= 14, outs  # it got there by working step by step

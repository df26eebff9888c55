"""configs/quickstart.yaml, shortened, on the embedded model: state tuning must lift the held-out accuracy.

The held-out score is the trainer's own (greedy completions, ``synthetic.extract_answer`` in the target format),
so this fails when answer extraction, generation, the tuned state's use or the data wiring break."""

from __future__ import annotations

from pathlib import Path

import torch

from rl_statetune.config import load_config
from rl_statetune.trainer import tune

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_held_out_accuracy_rises(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(QUICKSTART, overrides=[f"train.out_dir={tmp_path}", "train.steps=12", "data.eval_size=24"])
    res = tune(cfg, progress=False)
    # frozen: it answers "#### N", not the target "The answer is N."; tuned: the target format, arithmetic right
    assert res.acc_before <= 0.1, res
    assert res.acc_after >= 0.9, res

"""Rejection-filtered guidance (``guide.cot.verify``): guide CoTs whose final answer the task's verifier rejects
never reach the learner.

* The source marks exactly the wrong CoTs as rejected and counts kept / dropped.
* Direction: a guide that is right on half the prompts ("The answer is N.") and wrong on the others
  ("#### N+1"); with the filter, the match reward trains on the right half only and held-out accuracy goes
  0 -> >= 0.9. A filter that keeps the wrong CoTs instead (the verdict inverted in ``CotSource.batch``) fails both.
"""

from __future__ import annotations

from char_guide import CharGuide

from rl_statetune.config import DataConfig
from rl_statetune.data import load_examples
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.source import make_source
from rl_statetune.tokenizer import WorldTokenizer

DATA = {"target_format": "sentence", "train_size": 16, "eval_size": 12}


def half_wrong_guide() -> tuple[CharGuide, set[str]]:
    train, _ = load_examples(DataConfig(**DATA))
    cots, right = {}, set()
    for i, e in enumerate(train):
        text = e.target.strip()
        if i % 2:
            text = text.replace(f"The answer is {e.answer}.", f"#### {int(e.answer) + 1}")
        else:
            right.add(e.prompt)
        cots[e.prompt] = text
    return CharGuide(cots), right


def config(tmp_path, steps: int = 6) -> RLConfig:
    return RLConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA,
        "guide": {"task_rationales": True, "cot": {"verify": True}},   # overridden by the scripted guide below
        "reward": {"kind": "match", "samples": 8},
        "pg": {"advantage": "batch"},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": steps, "batch_size": 8, "log_every": 1, "out_dir": str(tmp_path),
                  "eval_max_new_tokens": 40},
    })


def test_the_filter_rejects_exactly_the_wrong_cots(tmp_path):
    guide, right = half_wrong_guide()
    cfg = config(tmp_path)
    train, _ = load_examples(cfg.data)
    src = make_source(cfg, guide, train, WorldTokenizer())
    items = src.batch(0) + src.batch(1)
    assert {it.prompt for it in items if it.accepted} == {it.prompt for it in items} & right
    assert src.stats.kept == sum(it.accepted for it in items) == 8 and src.stats.dropped == 8


def test_rejection_filtered_guidance_raises_heldout_accuracy(tmp_path):
    guide, _ = half_wrong_guide()
    res = run_rl(config(tmp_path), progress=False, guide=guide)
    assert res.acc_before <= 0.1, res.acc_before
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)

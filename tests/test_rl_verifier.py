"""The task's verifier as a reward: GRPO on the learner's own sampled answers, judged by the task's answer check.

* The check itself: the synthetic task's rule (number and format of the first line) and GSM8K's ``#### N``.
* Direction: on the embedded model, with no guide at all, the verifier alone switches the answer format (the
  frozen model answers "#### N"; only "The answer is N." passes), so held-out accuracy (greedy, scored by the
  task's rule) rises from 0 to >= 0.9. Inverting the verdict in ``outcome.verifier_rewards`` makes it fail.
"""

from __future__ import annotations

import torch

from rl_statetune.config import DataConfig
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.outcome import verifier_rewards
from rl_statetune.rl.verifier import hash_number, make_check, reference_answer


def test_synthetic_and_gsm8k_checks():
    check = make_check(DataConfig(target_format="sentence"))
    assert check(" 3 + 4 = 7. The answer is 7.\nQ: more", "7")
    assert not check(" 3 + 4 = 7. The answer is 8.", "7")
    assert not check(" 3 + 4 = 7. #### 7", "7")                 # right number, wrong format
    assert not check("The answer is 7.", "")                    # no reference: never right
    gsm = make_check(DataConfig(task="jsonl", path="x.jsonl"))
    assert gsm("She pays 2 * 600 = 1,200 dollars.\n#### 1,200", "1200")
    assert gsm("#### 3.50", "3.5") and not gsm("#### 12", "1200") and not gsm("1200", "1200")
    assert hash_number("#### 5 then #### 6") == "6"
    assert reference_answer("", "Steps. #### 42") == "42" and reference_answer("7", "#### 42") == "7"


def test_verifier_rewards_pair_each_answer_with_its_prompt():
    items = [CotItem(f"Q{n}", f"Q{n}", "", answer=str(n)) for n in range(3)]
    texts = [f" The answer is {n if g % 2 == 0 else n + 1}." for n in range(3) for g in range(4)]
    r = verifier_rewards(make_check(DataConfig(target_format="sentence")), items, texts, 4)
    assert torch.equal(r, torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 3))


def test_grpo_with_the_verifier_alone_raises_heldout_accuracy(tmp_path):
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"},
        "data": {"target_format": "sentence", "train_size": 16, "eval_size": 12},
        "reward": {"terms": {"verifier": 1.0}, "samples": 8, "max_new_tokens": 32},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": 5, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path), "eval_max_new_tokens": 40},
    })
    res = run_rl(cfg, progress=False)
    assert res.acc_before <= 0.1, res.acc_before       # the frozen model answers "#### N", not "The answer is N."
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)
    assert max(res.rewards[-2:]) > res.rewards[0]         # the share of right sampled answers rose

"""Mixed-policy GRPO (``reward.guide_in_group``): the guide's CoT is one more member of the verifier's group.

* The advantages: groups of ``G + 1`` (the guide's CoT left out where ``guide.cot.verify`` rejected it), the
  guide's own advantage clipped at zero, against values worked out by hand.
* Direction: at sampling temperature 0.3 the embedded model's own answers are all in its "#### N" format, so the
  verifier alone has nothing to rank (every answer wrong) and held-out accuracy stays at 0; with a guide right on
  half the prompts ("The answer is N.") and wrong on the rest ("#### N+1") in the group, the right CoTs pull,
  the wrong ones do not, and held-out accuracy rises to >= 0.9. Inverting the guide's verdict in
  ``Learner._rollout_loss``, or pairing each guide row with the next prompt's CoT, makes it fail.
"""

from __future__ import annotations

import pytest
import torch
from char_guide import CharGuide
from test_rl_rejection import DATA, half_wrong_guide

from rl_statetune.checkpoint import load_model
from rl_statetune.config import DataConfig
from rl_statetune.data import load_examples
from rl_statetune.lm import pad_right
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.outcome import group_verifier_advantages, guide_rows
from rl_statetune.rl.rollout import append_rows, token_logprobs
from rl_statetune.rl.source import make_source
from rl_statetune.synthetic import extract_answer
from rl_statetune.tokenizer import WorldTokenizer


def test_group_advantages_include_the_guide_and_clip_its_own():
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    adv = group_verifier_advantages(v, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([True, True, False]),
                                    normalize_std=False)
    # prompt 0: [0 0 0 | 1], mean 1/4; prompt 1: [1 1 0 | 0], mean 1/2, guide -1/2 clipped to 0;
    # prompt 2: the guide's CoT left out, [1 1 0], mean 2/3
    want = torch.tensor([-0.25, -0.25, -0.25, 0.5, 0.5, -0.5, 1 / 3, 1 / 3, -2 / 3, 0.75, 0.0, 0.0])
    torch.testing.assert_close(adv, want)
    normed = group_verifier_advantages(v[:1], torch.tensor([1.0]), torch.tensor([True]))
    torch.testing.assert_close(normed, torch.tensor([-0.5, -0.5, -0.5, 1.5]), atol=1e-5, rtol=0)   # sd 0.5


def strict_check(text: str, answer: str) -> bool:
    """The verifier of the direction test: the task's rule, and the line must open with "Check:", which the
    frozen model never writes: the learner's own answers are all wrong, only the guide's can be right."""
    return text.strip().startswith("Check:") and extract_answer(text, "sentence") == int(answer)


def check_guide() -> CharGuide:
    """Right ("Check: The answer is N.") on even training prompts, wrong ("Check: The answer is N+1.") on odd."""
    train, _ = load_examples(DataConfig(**DATA))
    return CharGuide({e.prompt: f"Check: The answer is {int(e.answer) + i % 2}." for i, e in enumerate(train)})


def cot_logprobs(learner: Learner, items) -> torch.Tensor:
    """[N] the learner's log-probability of each item's guide CoT after its prompt."""
    with torch.no_grad():
        ids, _ = guide_rows(items, learner.tok)
        idx, lengths = pad_right([learner.tok.encode(it.prompt) for it in items], 0, learner.device)
        rows, mask = append_rows(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool), ids)
        return (token_logprobs(learner.model, learner.init_state, idx, lengths, rows, 1.0) * mask).sum(1)


def test_the_guides_right_cots_pull_and_its_wrong_ones_do_not(monkeypatch):
    monkeypatch.setattr("rl_statetune.rl.learner.make_check", lambda data: strict_check)
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "guide": {"task_rationales": True},
        "reward": {"terms": {"verifier": 1.0}, "guide_in_group": True, "samples": 4, "max_new_tokens": 16},
        "optim": {"lr": 1.0, "lr_final": 1.0}, "train": {"batch_size": 8},
    })
    model, tok = load_model("embedded"), WorldTokenizer()
    train, _ = load_examples(cfg.data)
    items = make_source(cfg, check_guide(), train, tok).batch(0)
    right = torch.tensor([strict_check(it.cot, it.answer) for it in items])
    assert int(right.sum()) == 4
    learner = Learner(model, tok, cfg, seed=0)
    before = cot_logprobs(learner, items)
    for step in range(3):
        m = learner.train_step(items, step, 3)
        assert m["verifier_reward"] == 0.0 and m["guide_group_right"] == 0.5   # only the guide can be right
    gain = cot_logprobs(learner, items) - before
    # the right CoTs gain log-probability, and much more than the wrong ones, whose only change comes through
    # the state they share with the right ones
    assert gain[right].min() > 1.0, gain
    assert gain[right].mean() > gain[~right].mean() + 1.0, gain


@pytest.mark.parametrize("reward, guide, message", [
    ({"terms": {"match": 1.0}, "guide_in_group": True}, {"task_rationales": True}, "add the verifier term"),
    ({"terms": {"verifier": 1.0}, "guide_in_group": True}, {}, "reward.guide_in_group needs a guide"),
])
def test_guide_in_group_needs_the_verifier_and_a_guide(reward, guide, message):
    with pytest.raises(ValueError, match=message):
        RLConfig.model_validate({"reward": reward, "guide": guide})


def test_the_guide_writes_cots_for_the_group_and_verify_is_allowed():
    guide, right = half_wrong_guide()
    cfg = RLConfig.model_validate({"data": DATA, "guide": {"task_rationales": True, "cot": {"verify": True}},
                                   "reward": {"terms": {"verifier": 1.0}, "guide_in_group": True}})
    train, _ = load_examples(cfg.data)
    items = make_source(cfg, guide, train, WorldTokenizer()).batch(0)
    assert all(it.guide_text for it in items)
    assert {it.prompt for it in items if it.accepted} == {it.prompt for it in items} & right

"""``pg.advantage: greedy`` (ReMax): the verifier term's baseline is the verdict on the learner's own greedy answer.

* The advantages against values worked out by hand, with and without the guide's member in the group.
* The baseline's verdicts are those of the learner's greedy answers: equal to the verdicts on what the held-out
  evaluation's greedy ``generate`` writes from the same state, prompt by prompt.
* Through the learner: each answer's advantage is its verdict minus its own prompt's greedy verdict, the negative
  ones times ``pg.negative_weight``.
* Direction: with no guide, the verifier alone with the greedy baseline switches the embedded model's answer
  format (held-out 0 -> >= 0.9, as ``test_rl_verifier``'s GRPO test). It fails with the baseline's sign flipped.
* Config errors: the greedy baseline without the verifier term, or beside a CoT term.
"""

from __future__ import annotations

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.data import load_examples
from rl_statetune.generation import generate
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.outcome import group_verifier_advantages
from rl_statetune.rl.policy_gradient import advantages
from rl_statetune.rl.verifier import make_check
from rl_statetune.tokenizer import WorldTokenizer

from learner_probes import capture_loss_inputs


def test_greedy_baseline_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    greedy = torch.tensor([0.0, 1.0, 1.0])
    # right samples where the greedy answer is wrong pull, wrong ones where it is right push, agreement is 0
    want = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    torch.testing.assert_close(advantages(r, mode="greedy", normalize_std=False, greedy=greedy), want)
    # normalised by the spread of each context's rewards with the greedy one among them (unbiased): row 0
    # [1 0 0 1 | 0] sd sqrt(0.3); row 1 all equal (0 stays 0); row 2 [0 0 0 0 | 1] sd sqrt(0.2)
    sd = torch.tensor([0.3, 1.0, 0.2]).sqrt()[:, None]
    torch.testing.assert_close(advantages(r, mode="greedy", greedy=greedy), want / (sd + 1e-6))
    valid = torch.tensor([[True, True, False, True]] * 3)
    assert advantages(r, valid, mode="greedy", normalize_std=False, greedy=greedy)[0, 2] == 0
    with pytest.raises(ValueError, match="greedy action"):
        advantages(r, mode="greedy")


def test_greedy_baseline_with_the_guide_in_the_group():
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    adv = group_verifier_advantages(v, torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, True, True]),
                                    mode="greedy", normalize_std=False, greedy=torch.tensor([0.0, 1.0, 1.0]))
    # the guide's right CoT pulls where the greedy answer is wrong (prompt 0), not where it is right (prompt 1);
    # its wrong CoT never pushes (prompt 2: -1 clipped)
    want = torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(adv, want)


def cfg_for(tmp_path, model: str = "embedded", corpus: str = "answer_format", **pg) -> RLConfig:
    return RLConfig.model_validate({
        "model": {"path": model},
        "data": {"corpus": corpus, "target_format": "sentence", "train_size": 16, "eval_size": 12},
        "reward": {"terms": {"verifier": 1.0}, "samples": 8, "max_new_tokens": 32},
        "pg": {"advantage": "greedy", **pg},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": 5, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path), "eval_max_new_tokens": 40},
    })


def test_the_baseline_judges_the_greedy_answers_the_evaluation_writes(tmp_path):
    cfg = cfg_for(tmp_path, model="embedded:reason", corpus="reasoning")   # its direct answers: 2 of 16 right
    model, tok = load_model(cfg.model.path), WorldTokenizer()
    learner = Learner(model, tok, cfg, seed=0)
    train, _ = load_examples(cfg.data)
    items = [CotItem(e.prompt, e.prompt, "", answer=e.answer) for e in train]
    got = learner.greedy_rewards(items)
    texts = generate(model, tok, [e.prompt for e in train], 32, init_state=learner.init_state, stop=("\n",))
    check = make_check(cfg.data)
    want = torch.tensor([float(check(t, e.answer)) for t, e in zip(texts, train)])
    assert torch.equal(got, want), (got, want)
    assert 0 < int(want.sum()) < len(train), want     # both verdicts occur, so a wrong pairing would show


@pytest.mark.parametrize("passes, negative_weight", [(True, 1.0), (False, 1.0), (False, 0.5)])
def test_each_prompts_answers_are_measured_against_its_own_greedy_answer(tmp_path, monkeypatch, passes,
                                                                         negative_weight):
    """Every sampled answer passes (or every one fails); the greedy answers of prompts 0 and 2 are called right, of
    the others wrong: each answer's advantage must be its verdict minus its own prompt's greedy verdict, the
    negative ones times ``pg.negative_weight`` (fails when the verdicts are paired with another prompt's, or the
    weight is not applied)."""
    cfg = cfg_for(tmp_path, normalize_std=False, negative_weight=negative_weight)
    monkeypatch.setattr("rl_statetune.rl.learner.make_check", lambda data: lambda text, answer: passes)
    greedy = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(Learner, "greedy_rewards", lambda self, items: greedy[: len(items)])
    seen = capture_loss_inputs(monkeypatch)
    learner = Learner(load_model("embedded"), WorldTokenizer(), cfg, seed=0)
    train, _ = load_examples(cfg.data)
    items = [CotItem(e.prompt, e.prompt, "", answer=e.answer) for e in train[:6]]
    _, m = learner.loss(items)
    G = cfg.reward.samples
    adv = seen["adv"]
    per_answer = torch.where(adv.abs().amax(1) > 0, adv.sum(1) / (adv != 0).sum(1).clamp_min(1), 0).view(6, G)
    want = float(passes) - greedy
    want = torch.where(want < 0, want * negative_weight, want)
    torch.testing.assert_close(per_answer, want[:, None].expand(6, G))   # the same on each of an answer's tokens
    assert m["greedy_reward"] == float(greedy.mean())


def test_verifier_with_the_greedy_baseline_raises_heldout_accuracy(tmp_path):
    res = run_rl(cfg_for(tmp_path, normalize_std=False), progress=False)
    assert res.acc_before <= 0.1, res.acc_before       # the frozen model answers "#### N", not "The answer is N."
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)


@pytest.mark.parametrize("reward", [{"terms": {"on_policy": 1.0}}, {"terms": {"match": 1.0, "verifier": 1.0}},
                                    {"kind": "match"}])
def test_greedy_baseline_needs_the_verifier_and_no_cot_term(reward):
    with pytest.raises(ValueError, match="pg.advantage: greedy"):
        RLConfig.model_validate({"reward": reward, "guide": {"task_rationales": True}, "pg": {"advantage": "greedy"}})

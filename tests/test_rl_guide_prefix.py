"""The guide's opening in the group (``reward.guide_prefix`` < 1): the guide's member of the verifier's GRPO group
holds only the first tokens of its CoT, and the learner samples the rest.

* ``guide_heads`` / ``clip_heads`` against values worked out by hand.
* The member's per-token advantage: its group advantage in full on the learner's continuation, clipped at zero
  on the guide's opening (a wrong member never pushes the guide's text down).
* Direction: a guide whose every CoT is wrong ("Check: #### N+1") under a verifier that wants exactly
  "Check: #### N" with the right N, which the learner's own answers never are. The whole CoT in the group never
  pulls; its opening " Check: ####" followed by the learner's own number is often right, so the opening's
  log-probability rises. Fails when the prefix is ignored, when the continuation is left out of the judged text,
  and when the continuation is sampled without the opening before it.
"""

from __future__ import annotations

import re

import pytest
import torch
from char_guide import CharGuide
from test_rl_rejection import DATA

from rl_statetune.checkpoint import load_model
from rl_statetune.config import DataConfig
from rl_statetune.data import load_examples
from rl_statetune.lm import pad_right
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.outcome import clip_heads, guide_heads, guide_rows
from rl_statetune.rl.rollout import append_rows, token_logprobs
from rl_statetune.rl.source import make_source
from rl_statetune.tokenizer import WorldTokenizer


def test_heads_and_their_clip():
    assert guide_heads([[1, 2, 3, 4, 5], [7, 8], [9]], 0.5) == [[1, 2], [7], [9]]
    assert guide_heads([[1, 2, 3]], 1.0) == [[1, 2, 3]]
    adv = torch.tensor([[0.5, 0.5, 0.5], [-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0], [3.0, 3.0, 3.0]])
    got = clip_heads(adv, 1, [[5, 6], [7], [8, 9, 1]])
    want = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, -1.0], [0.0, -2.0, 0.0], [3.0, 3.0, 3.0]])
    torch.testing.assert_close(got, want)
    assert adv[1, 0] == -1.0    # the input is left as it was


def check_hash(text: str, answer: str) -> bool:
    """The verifier here: the line is "Check: #### N" with the right N and nothing else. The embedded model never
    opens with "Check:"; after "Check: ####" it writes a number, right on about half of these prompts."""
    m = re.fullmatch(r"Check: #### (\d+)", text.strip())
    return m is not None and int(m.group(1)) == int(answer)


def wrong_guide() -> CharGuide:
    train, _ = load_examples(DataConfig(**DATA))
    return CharGuide({e.prompt: f"Check: #### {int(e.answer) + 1}" for e in train})


def setup(monkeypatch, prefix: float, temperature: float = 0.5):
    monkeypatch.setattr("rl_statetune.rl.learner.make_check", lambda data: check_hash)
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "guide": {"task_rationales": True},
        "reward": {"terms": {"verifier": 1.0}, "guide_in_group": True, "guide_prefix": prefix, "samples": 4,
                   "max_new_tokens": 24, "temperature": temperature},
        "optim": {"lr": 1.0, "lr_final": 1.0}, "train": {"batch_size": 8},
    })
    model, tok = load_model("embedded"), WorldTokenizer()
    train, _ = load_examples(cfg.data)
    items = make_source(cfg, wrong_guide(), train, tok).batch(0)
    return Learner(model, tok, cfg, seed=0), items


def opening_logprob(learner: Learner, items) -> torch.Tensor:
    """[N] the learner's log-probability of " Check: ####" (the guide's opening) after each prompt."""
    with torch.no_grad():
        heads = guide_heads(guide_rows(items, learner.tok)[0], learner.cfg.reward.guide_prefix)
        assert {learner.tok.decode(h) for h in heads} == {" Check: ####"}
        idx, lengths = pad_right([learner.tok.encode(it.prompt) for it in items], 0, learner.device)
        rows, mask = append_rows(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool), heads)
        return (token_logprobs(learner.model, learner.init_state, idx, lengths, rows, 1.0) * mask).sum(1)


def test_the_member_keeps_its_advantage_on_the_continuation_and_clips_the_opening(monkeypatch):
    learner, items = setup(monkeypatch, 0.6)
    N, G = len(items), learner.cfg.reward.samples
    own = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * N)     # half the learner's answers right, the guide's member wrong

    def verdicts(check, items_, texts, g):
        return own if g == G else torch.zeros(len(items_), 1)

    monkeypatch.setattr("rl_statetune.rl.learner.verifier_rewards", verdicts)
    seen = {}
    monkeypatch.setattr("rl_statetune.rl.learner.token_mean_loss",
                        lambda lp, adv, mask: seen.update(adv=adv.cpu(), mask=mask.cpu()) or (lp * 0).sum())
    learner._rollout_loss(items)
    adv, mask = seen["adv"][N * G:], seen["mask"][N * G:]
    # group [1 1 0 0 | 0]: mean 0.4, sd 0.5477 (n - 1); the member's advantage -0.4 / 0.5477 = -0.7303
    want = torch.tensor(-0.7303)
    for n in range(N):
        assert not adv[n, :3].any()                             # the opening " Check: ####": clipped to 0
        cont = mask[n, 3:]
        assert cont.any()                                       # the learner wrote something after it
        torch.testing.assert_close(adv[n, 3:][cont], want.expand(int(cont.sum())), atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefix, pulls", [(0.6, True), (1.0, False)])
def test_an_always_wrong_guides_opening_pulls_when_the_learner_finishes_it_right(monkeypatch, prefix, pulls):
    learner, items = setup(monkeypatch, prefix)
    assert not any(check_hash(it.cot, it.answer) for it in items)           # every CoT of the guide is wrong
    before = opening_logprob(learner, items) if prefix < 1 else None
    rights = []
    for step in range(3):
        m = learner.train_step(items, step, 3)
        rights.append(m["guide_group_right"])
        if step == 0:
            assert m["verifier_reward"] == 0.0          # the learner's own answers never open with "Check:"
    if not pulls:
        assert rights == [0.0, 0.0, 0.0]
        return
    # the opening followed by the learner's own number is right on some prompts, so the opening gains
    assert rights[0] >= 0.25, rights
    gain = opening_logprob(learner, items) - before
    assert gain.min() > 0.5 and gain.mean() > 2.0, gain


def test_guide_prefix_needs_the_guide_in_the_group():
    with pytest.raises(ValueError, match="set reward.guide_in_group: true"):
        RLConfig.model_validate({"reward": {"terms": {"verifier": 1.0}, "guide_prefix": 0.5},
                                 "guide": {"task_rationales": True}})
    with pytest.raises(ValueError, match="guide_prefix"):
        RLConfig.model_validate({"reward": {"terms": {"verifier": 1.0}, "guide_in_group": True, "guide_prefix": 0.0},
                                 "guide": {"task_rationales": True}})


def test_the_weak_guide_config_loads_and_its_examples_are_right():
    """configs/rl_weak_guide.yaml: SmolLM2 in the group with its opening only; the solved problems it is shown
    are right by the task's own check (a wrong example would teach the guide a wrong format or sum)."""
    from pathlib import Path

    from rl_statetune.rl.config import load_rl_config
    from rl_statetune.rl.verifier import make_check

    repo = Path(__file__).resolve().parents[1]
    cfg = load_rl_config(repo / "configs/rl_weak_guide.yaml")
    assert cfg.reward.guide_in_group and cfg.reward.guide_prefix == 0.2
    assert (repo / cfg.guide.config).is_file()
    check = make_check(cfg.data)
    shots = re.findall(r"Q: .*? What is (.*?)\?\nA: (.*)", cfg.guide.cot.prompt_template)
    assert len(shots) == 3
    for expr, answer_line in shots:
        values = dict(re.findall(r"(\w) = (\d+)", cfg.guide.cot.prompt_template.split(answer_line)[0].split("Q: ")[-1]))
        want = eval(re.sub(r"[a-z]", lambda m: values[m.group(0)], expr))   # noqa: S307 - digits and +/- only
        assert check(answer_line, str(want)), answer_line

"""The ``steps`` term: the task's check of each equation an answer writes, on the tokens of its right-hand side.

* Equations judged by hand: right and wrong sums, a value substituted for the wrong name, GSM8K's calculator
  annotations, parentheses; an unbound name, a division by zero and text without ``=`` are not judged.
* Token attribution with the world tokenizer: exactly the right-hand side's tokens are judged, with its verdict.
* The advantages by hand (batch baseline over the judged tokens).
* Through the learner: each answer is judged with its own prompt's names (fails with the prompts misordered), and
  three steps of the term alone move the learner's choice at a wrong sum toward the right one.
"""

from __future__ import annotations

import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.rl.align import decode_with_spans
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.steps import bindings, evaluate, judge_steps, step_advantages, step_token_rewards
from rl_statetune.tokenizer import WorldTokenizer

from learner_probes import answer_with, capture_loss_inputs, preference

PROMPT = "Q: a = 12, c = 15, w = 16. What is c - a + w?\nA:"


def verdicts(text: str, prompt: str = PROMPT) -> list[tuple[str, bool]]:
    return [(text[s:e], ok) for s, e, ok in judge_steps(text, prompt)]


def test_equations_are_judged_with_the_prompts_names():
    assert bindings(PROMPT) == {"a": 12, "c": 15, "w": 16}
    right = " c - a + w = 15 - 12 + 16. 15 - 12 = 3. 3 + 16 = 19. The answer is 19."
    assert verdicts(right) == [("15 - 12 + 16", True), ("3", True), ("19", True)]
    wrong = " c - a + w = 15 - 13 + 16. 15 - 13 = 3. 3 + 16 = 18. The answer is 18."
    assert verdicts(wrong) == [("15 - 13 + 16", False), ("3", False), ("18", False)]
    assert verdicts("She sold <<48/2=24>>24 and <<24*3=71>>71.", "") == [("24", True), ("71", False)]
    assert verdicts("(2 + 3) * 4 = 20 and 7 / 2 = 3.5", "") == [("20", True), ("3.5", True)]
    assert verdicts(" q + a = 3. 4 / 0 = 1. The answer is 19.") == []     # q unbound; no value; no equation
    assert evaluate("2 ** 3", {}) is None and evaluate("a - 2", {"a": 5}) == 3


def test_the_right_hand_sides_tokens_carry_the_verdict():
    tok = WorldTokenizer()
    answers = [" c - a + w = 15 - 13 + 16. 15 - 13 = 2.", " 15 - 12 = 3. The answer is 3."]
    ids = [tok.encode(a) for a in answers]
    decoded = [decode_with_spans(tok, i) for i in ids]
    K = max(map(len, ids))
    reward, judged = step_token_rewards([t for t, _ in decoded], [s for _, s in decoded], [PROMPT] * 2, K)
    pieces = [[(tok.decode([i]), float(reward[r, t])) for t, i in enumerate(row) if judged[r, t]]
              for r, row in enumerate(ids)]
    assert pieces == [[(" 15", 0.0), (" -", 0.0), (" 13", 0.0), (" +", 0.0), (" 16", 0.0), (" 2", 1.0)],
                      [(" 3", 1.0)]]


def test_step_advantages_by_hand():
    reward = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    judged = torch.tensor([[False, True, True, True], [True, False, False, False]])
    # judged rewards 1, 0, 1, 1: baseline 3/4
    want = torch.tensor([[0.0, 0.25, -0.75, 0.25], [0.25, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(step_advantages(reward, judged), want)
    assert torch.equal(step_advantages(reward, torch.zeros_like(judged)), torch.zeros_like(reward))


def test_a_wrong_step_is_pushed_down_and_the_right_one_up(monkeypatch):
    """The learner's two answers to one prompt differ in one step (``15 - 12 = 3`` against ``= 4``); three steps of
    the ``steps`` term alone must move the learner's next-token choice at that step toward the right result.
    Fails with the advantage's sign flipped, and with the verdict put on the token after the right-hand side."""
    cfg = RLConfig.model_validate({"model": {"path": "embedded:reason"},
                                   "data": {"corpus": "reasoning", "target_format": "sentence"},
                                   "reward": {"terms": {"steps": 1.0}, "samples": 2},
                                   "optim": {"lr": 0.3, "lr_final": 0.3}})
    tok = WorldTokenizer()
    learner = Learner(load_model("embedded:reason"), tok, cfg, seed=0)
    prompt = "Mode: reason\n" + PROMPT
    head = " c - a + w = 15 - 12 + 16. 15 - 12 ="
    answers = [head + " 3. 3 + 16 = 19. The answer is 19.\n", head + " 4. 4 + 16 = 20. The answer is 20.\n"]
    answer_with(monkeypatch, tok, [prompt], answers)
    before = preference(learner, tok, prompt, head, " 3", " 4")
    items = [CotItem(prompt, prompt, "", answer="19")]
    for step in range(3):
        m = learner.train_step(items, step, 3)
    after = preference(learner, tok, prompt, head, " 3", " 4")
    assert m["step_right"] < 1       # the wrong answer's steps were judged wrong
    assert after > before + 1.0, (before, after)


def test_each_answer_is_judged_with_its_own_prompts_names(monkeypatch):
    """Two prompts bind ``a`` and ``c`` to different values; their answers substitute them rightly, and one answer
    of the first prompt gets its sum wrong. Through the learner, every substitution's tokens must get a positive
    advantage and only the wrong sum a negative one (fails when the answers are judged with the other prompt's
    names)."""
    cfg = RLConfig.model_validate({"model": {"path": "embedded"}, "data": {"target_format": "sentence"},
                                   "reward": {"terms": {"steps": 1.0}, "samples": 2}})
    tok = WorldTokenizer()
    prompts = ["Q: a = 12, c = 15. What is c - a?\nA:", "Q: a = 20, c = 31. What is c - a?\nA:"]
    answers = [" c - a = 15 - 12. 15 - 12 = 3.\n", " c - a = 15 - 12. 15 - 12 = 4.\n",
               " c - a = 31 - 20. 31 - 20 = 11.\n", " c - a = 31 - 20. 31 - 20 = 11.\n"]

    answer_with(monkeypatch, tok, prompts, answers)
    seen = capture_loss_inputs(monkeypatch)
    learner = Learner(load_model("embedded"), tok, cfg, seed=0)
    learner.loss([CotItem(p, p, "", answer="0") for p in prompts])
    for r, a in enumerate(answers):
        ids = tok.encode(a)
        subst = [t for t, i in enumerate(ids) if tok.decode(ids[: t + 1]).endswith(("15 - 12", "31 - 20"))
                 and t > ids.index(tok.encode(" =")[0])][:1]
        result = len(ids) - 3          # " 3" / " 4" / " 11" before ".\n"
        assert seen["adv"][r, subst[0]] > 0, (r, a)
        assert (seen["adv"][r, result] < 0) == (r == 1), (r, a, seen["adv"][r])

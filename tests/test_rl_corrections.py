"""The ``corrections`` term: at each wrong equation of the learner's own answer, the right value is taught after the
learner's own prefix (the task's rule as the expert, labelling the states the learner's sampling reaches).

* Corrections by hand: a wrong sum gets the left side's value, a wrong substitution the bound values in the
  learner's own spacing; right equations, non-whole values and right sides with names get none.
* The rows: the answer's tokens before the wrong right-hand side, then the right value's tokens, decode to the
  answer's text with the value replaced.
* Through the learner: each correction row is scored after its own prompt and head (its log-probabilities equal a
  plain forward's) and carries the term's weight on the right value's tokens only.
* Direction: three steps of the term alone move the learner's choice at a wrong sum toward the right one.
"""

from __future__ import annotations

import json

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.rl.align import decode_with_spans
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.steps import correction_rows, corrections
from rl_statetune.synthetic import reasoning_problems
from rl_statetune.tokenizer import WorldTokenizer

from learner_probes import answer_with, capture_loss_inputs, preference

PROMPT = "Q: a = 12, c = 15, w = 16. What is c - a + w?\nA:"


def fixed(text: str, prompt: str = PROMPT) -> list[tuple[str, str]]:
    """Each correction as (the text before it, the right value)."""
    return [(text[:s], right) for s, right in corrections(text, prompt)]


def test_wrong_equations_get_their_right_side():
    wrong = " c - a + w = 15 - 13 + 16. 15 - 13 = 3. 3 + 16 = 18. The answer is 18."
    assert fixed(wrong) == [(" c - a + w = ", "15 - 12 + 16"), (" c - a + w = 15 - 13 + 16. 15 - 13 = ", "2"),
                            (" c - a + w = 15 - 13 + 16. 15 - 13 = 3. 3 + 16 = ", "19")]
    assert fixed(" c-a+w = 15-13+16. 15 - 12 = 3.") == [(" c-a+w = ", "15-12+16")]   # the learner's spacing kept
    assert fixed(" c - a + w = 15 - 12 + 16. 15 - 12 = 3. 3 + 16 = 19.") == []      # all right
    assert fixed("She sold <<24*3=71>>71 and (2 + 3) * 4 = 21.", "") == [("She sold <<24*3=", "72"),
                                                                      ("She sold <<24*3=71>>71 and (2 + 3) * 4 = ",
                                                                       "20")]
    assert fixed("7 / 2 = 3. 15 - 13 = c - a.") == []     # 7/2 is no whole number; a right side with names


def test_rows_hold_the_learners_prefix_then_the_right_value():
    tok = WorldTokenizer()
    answers = [" c - a + w = 15 - 13 + 16. 15 - 13 = 3. 3 + 16 = 19.\n", " 15 - 12 = 3. 3 + 16 = 20.\n"]
    ids = [tok.encode(a) for a in answers]
    decoded = [decode_with_spans(tok, i) for i in ids]
    rows = correction_rows([t for t, _ in decoded], [s for _, s in decoded], ids, [PROMPT] * 2, tok)
    assert [(r, tok.decode(head + fix)) for r, head, fix in rows] == [
        (0, " c - a + w = 15 - 12 + 16"), (0, " c - a + w = 15 - 13 + 16. 15 - 13 = 2"),
        (1, " 15 - 12 = 3. 3 + 16 = 19")]
    for r, head, fix in rows:
        assert ids[r][: len(head)] == head and tok.decode(fix).startswith(" ")   # the learner's own tokens first
    assert [tok.decode(fix) for _, _, fix in rows] == [" 15 - 12 + 16", " 2", " 19"]


def learner_with_answers(monkeypatch, cfg: dict, prompts: list[str], answers: list[str], model: str = "embedded"):
    """A learner whose sampled answers are ``answers`` (``samples`` per prompt, in order)."""
    tok = WorldTokenizer()
    answer_with(monkeypatch, tok, prompts, answers)
    cfg = RLConfig.model_validate({"model": {"path": model}, "data": {"target_format": "sentence"},
                                   "reward": {"samples": len(answers) // len(prompts), **cfg},
                                   "optim": {"lr": 0.3, "lr_final": 0.3}})
    return Learner(load_model(model), tok, cfg, seed=0), tok


def test_correction_rows_are_scored_after_their_own_prompt_and_head(monkeypatch):
    """Two prompts, one wrong sum in the second prompt's first answer: one correction row, after that prompt and
    that answer's head, with the weight on the right value's tokens and log-probabilities equal to a plain forward's
    (fails with the row put after another answer's prompt, with another answer's tokens as its head, or with the
    weight on the head). The next answer writes other steps, so a head taken from it would differ."""
    prompts = ["Q: a = 12, c = 15. What is c - a?\nA:", "Q: a = 20, c = 31. What is c - a?\nA:"]
    answers = [" c - a = 15 - 12. 15 - 12 = 3.\n", " c - a = 15 - 12. 15 - 12 = 3.\n",
               " c - a = 31 - 20. 31 - 20 = 12.\n", " c - a = 31 - 20. 20 + 11 = 31.\n"]
    learner, tok = learner_with_answers(monkeypatch, {"terms": {"corrections": 2.5}}, prompts, answers)
    seen = capture_loss_inputs(monkeypatch)
    _, metrics = learner.loss([CotItem(p, p, "", answer="0") for p in prompts])
    assert seen["adv"].shape[0] == 5 and metrics["corrections"] == 0.25
    assert torch.equal(seen["adv"][:4], torch.zeros(4, seen["adv"].shape[1]))   # no other term
    fix = tok.encode(" 11")
    assert seen["mask"][4].sum() == len(fix)
    assert torch.equal(seen["adv"][4], 2.5 * seen["mask"][4].float())
    context = tok.encode(prompts[1]) + tok.encode(" c - a = 31 - 20. 31 - 20 =")
    with torch.no_grad():
        logits, _ = learner.model(torch.tensor([context + fix]), learner.init_state(1))
    lp = logits[0].float().log_softmax(-1)
    want = torch.stack([lp[len(context) - 1 + t, i] for t, i in enumerate(fix)])
    torch.testing.assert_close(seen["lp"][4, : len(fix)].cpu(), want, atol=1e-4, rtol=1e-4)
    assert metrics["correction_logprob"] == pytest.approx(float(want.mean()), abs=1e-4)


def test_corrections_move_a_wrong_sum_toward_the_right_one(monkeypatch):
    """A sum the frozen model gets wrong even after right steps (``62 + 20 =``: it writes `` 81``); the learner's
    answers write the wrong value. Three steps of the ``corrections`` term alone must move its choice there toward
    `` 82`` (fails with the weight's sign flipped, and with the correction put one token later)."""
    prompt = "Mode: reason\nQ: g = 25, p = 20, r = 37. What is r + g + p?\nA:"
    head = " r + g + p = 37 + 25 + 20. 37 + 25 = 62. 62 + 20 ="
    answers = [head + " 81. The answer is 81.\n"] * 2
    learner, tok = learner_with_answers(monkeypatch, {"terms": {"corrections": 1.0}}, [prompt], answers,
                                        model="embedded:reason")
    before = preference(learner, tok, prompt, head, " 82", " 81")
    items = [CotItem(prompt, prompt, "", answer="82")]
    for step in range(3):
        m = learner.train_step(items, step, 3)
    after = preference(learner, tok, prompt, head, " 82", " 81")
    assert m["corrections"] == 1.0      # one wrong equation per answer
    assert before < 0 < after - 0.5, (before, after)     # the choice between the two flips


def test_a_run_with_the_corrections_alone_logs_their_logprob_as_its_reward(tmp_path):
    """A run whose only term is ``corrections`` (no verifier, no guide) completes and logs the corrections'
    log-probability as its per-step reward (the step log had no number to print and raised). The prompts carry the
    reasoning header, so the frozen model writes equations from the first step."""
    rows = [{"prompt": p.prompt("reason"), "target": p.solution(), "answer": str(p.answer)}
            for p in reasoning_problems(20, 5)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded:reason"},
        "data": {"task": "jsonl", "path": str(tmp_path / "task.jsonl"), "train_size": 16, "eval_size": 4},
        "reward": {"terms": {"corrections": 50.0}, "samples": 4, "max_new_tokens": 48},
        "train": {"steps": 2, "batch_size": 4, "log_every": 1, "eval": False, "out_dir": str(tmp_path / "run")}})
    res = run_rl(cfg, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "correction_logprob" in r]
    assert len(steps) == 2 and res.rewards == pytest.approx([r["correction_logprob"] for r in steps], abs=1e-5)
    assert all(r < 0 for r in res.rewards), res.rewards     # the right values' log-probabilities

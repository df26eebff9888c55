"""The reasoning task: harder problems answered directly (the default) or step by step (with a mode header), its
data wiring (``data.corpus: reasoning``) and the embedded model pretrained on it (``embedded:reason``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rl_statetune import synthetic as syn
from rl_statetune.config import ConfigError, parse_config
from rl_statetune.data import load_examples
from rl_statetune.paths import EMBEDDED_MODEL, EMBEDDED_MODELS, resolve_model_path

STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


def test_reasoning_problems_name_values_first_and_their_steps_are_right():
    probs = syn.reasoning_problems(500, seed=3)
    n_ops = [len(p.steps) - 1 for p in probs]  # the first step is the substitution
    assert min(n_ops) == 2 and max(n_ops) == 4 - 1
    for p in probs:
        listing, _, asked = p.question.partition(". What is ")
        values = dict(re.fullmatch(r"([a-z]) = (\d+)", kv).groups() for kv in listing.split(", "))
        assert 3 <= len(values) <= 5 and all(10 <= int(v) <= 49 for v in values.values())
        expr = asked.removesuffix("?")
        names = expr.split()[::2]
        assert len(set(names)) == len(names) and set(names) <= set(values)
        # the question asks for the names only: no number of the question sits next to its operation
        assert not re.search(r"\d", asked)
        subst = " ".join(values[t] if t in values else t for t in expr.split())
        assert p.steps[0] == f"{expr} = {subst}."
        total = int(values[names[0]])
        for s, (op, name) in zip(p.steps[1:], zip(expr.split()[1::2], names[1:])):
            a, op_, b, c = STEP.fullmatch(s).groups()
            assert int(a) == total and op_ == op and b == values[name]
            total = int(a) + int(b) if op == "+" else int(a) - int(b)
            assert int(c) == total and 1 <= total <= syn.REASON_MAX_TOTAL
        assert total == p.answer
    # most answers are two-digit: no shortcut through one-digit counts
    assert sum(p.answer >= 10 for p in probs) / len(probs) > 0.7
    # the asked order is not the listed order, and some listed values are not asked for
    assert sum(p.question.split(".")[0].split(", ")[0][0] != p.question.split("What is ")[1][0] for p in probs) > 200
    assert any(len(p.question.split(", ")) > len(p.steps) for p in probs)
    assert syn.reasoning_problems(20, seed=3) == probs[:20] and syn.reasoning_problems(20, seed=4) != probs[:20]


def test_both_solutions_are_one_line_and_score_by_the_final_number():
    p = syn.reasoning_problems(1, seed=0)[0]
    direct, reason = p.solution("direct"), p.solution("reason")
    assert direct == f" The answer is {p.answer}.\n"
    assert reason.startswith(" " + p.steps[0] + " ") and reason.endswith(f" The answer is {p.answer}.\n")
    assert reason.count("\n") == direct.count("\n") == 1
    for sol in (direct, reason):
        assert syn.extract_answer(sol, "sentence") == p.answer
    assert syn.is_reasoning(reason) and not syn.is_reasoning(direct)
    assert syn.score_answers([reason, direct, " The answer is 1000."], [p.answer] * 3) == pytest.approx(2 / 3)
    assert p.prompt() == f"Q: {p.question}\nA:" and p.prompt("reason") == "Mode: reason\n" + p.prompt()
    with pytest.raises(ValueError):
        p.solution("think")


def test_corpus_headers_and_modes():
    docs = syn.reasoning_documents(4000, seed=1, header_rate=0.6, reason_rate=0.8)
    headed = [d for d in docs if d.startswith("Mode: ")]
    reasoned = [d for d in docs if syn.is_reasoning(d.split("\nA:")[1])]
    assert abs(len(headed) / len(docs) - 0.6) < 0.03
    assert abs(len(reasoned) / len(headed) - 0.8) < 0.03
    for d in docs:
        head, _, sol = d.partition("\nA:")
        assert sol.endswith(".\n") and sol.count("\n") == 1
        if d.startswith("Mode: reason\n"):
            assert syn.is_reasoning(sol)
        else:  # "Mode: direct" or no header at all: the answer at once
            assert re.fullmatch(r" The answer is \d+\.\n", sol), d
    assert syn.reasoning_documents(50, seed=1) == syn.reasoning_documents(50, seed=1)


def test_old_corpus_is_unchanged():
    # the embedded answer-format model and its quickstart were made from exactly these documents
    docs = syn.corpus_documents(3, seed=0)
    assert all(re.search(r"(Answer: \d+|#### \d+|The answer is \d+\.)\n$", d) for d in docs)
    assert not any(d.startswith("Mode:") for d in syn.corpus_documents(200, seed=0))


def test_data_corpus_reasoning_trains_on_steps_with_no_header():
    cfg = parse_config({"data": {"corpus": "reasoning", "target_format": "sentence", "train_size": 64,
                                 "eval_size": 32}}).data
    train, held = load_examples(cfg)
    assert len(train) == 64 and 30 <= len(held) <= 32
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    for e in train + held:
        assert e.prompt.startswith("Q: ") and "Mode:" not in e.prompt
        assert syn.is_reasoning(e.target) and syn.extract_answer(e.target, "sentence") == int(e.answer)
    old, _ = load_examples(parse_config({"data": {"train_size": 8, "eval_size": 8}}).data)
    assert old[0].target.rstrip().endswith(tuple(f"#### {e.answer}" for e in old[:1]))


def test_reasoning_corpus_needs_the_sentence_format():
    with pytest.raises(ConfigError, match="target_format: sentence"):
        parse_config({"data": {"corpus": "reasoning", "target_format": "hash"}})


needs_reason_model = pytest.mark.skipif(
    not EMBEDDED_MODELS["reason"].exists(),
    reason=f"{EMBEDDED_MODELS['reason'].name} is not built (scripts/pretrain_embedded.py --corpus reasoning)")


def test_embedded_names():
    assert resolve_model_path("embedded") == EMBEDDED_MODEL == EMBEDDED_MODELS["arith"]
    assert resolve_model_path("embedded:arith") == EMBEDDED_MODEL
    with pytest.raises(FileNotFoundError, match="bundled: arith, reason"):
        resolve_model_path("embedded:nope")
    if EMBEDDED_MODELS["reason"].exists():
        assert resolve_model_path("embedded:reason") == EMBEDDED_MODELS["reason"]
        assert EMBEDDED_MODELS["reason"].stat().st_size <= 40 * 2**20
    else:
        with pytest.raises(FileNotFoundError, match="missing from this installation"):
            resolve_model_path("embedded:reason")

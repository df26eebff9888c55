"""GSM8K answer extraction (strict `#### N` and flexible last number) and harness-style exact match."""

from pathlib import Path

import pytest

from rl_statetune.eval import gsm8k
from rl_statetune.eval.data import load_task_data
from rl_statetune.eval.fakes import ByteTokenizer, ScriptedLM
from rl_statetune.eval.fewshot import build_docs
from rl_statetune.eval.tasks import get_task

FIX = Path(__file__).parent / "fixtures" / "eval"
STRICT, FLEX = "exact_match,strict-match", "exact_match,flexible-extract"


@pytest.mark.parametrize("output, strict, flexible", [
    (" 3*4=12 pencils.\n#### 12", "12", "12"),
    ("#### 1,250", "1,250", "1,250"),
    ("Together they cost $1,250.", "[invalid]", "$1,250."),
    ("It is now -5 degrees.\n#### -5", "-5", "-5"),
    ("#### 2.5\n", "2.5", "2.5"),
    ("#### 12.", "12.", "12."),
    ("The answer is 7", "[invalid]", "7"),
    ("#### 12\nBut maybe it is 13 instead", "12", "13"),
    ("####12", "[invalid]", "12"),
    ("no numbers at all", "[invalid]", "[invalid]"),
])
def test_extraction(output, strict, flexible):
    assert gsm8k.extract_strict(output) == strict
    assert gsm8k.extract_flexible(output) == flexible


@pytest.mark.parametrize("output, reference, strict, flexible", [
    ("so 3*4=12.\n#### 12", "3*4=<<3*4=12>>12\n#### 12", 1, 1),
    ("#### 1,250", "#### 1250", 1, 1),             # commas dropped on both sides
    ("That is $1,250.", "x\n#### 1,250", 0, 1),    # dollar sign and trailing period dropped
    ("#### -5", "4-9=-5\n#### -5", 1, 1),
    ("#### 2.5", "#### 2.5", 1, 1),
    ("#### 2.50", "#### 2.5", 0, 0),                # string match, as in the harness
    ("#### 12.", "#### 12", 1, 1),
    ("#### 12\nor 13", "#### 12", 1, 0),
    ("The answer is 12", "#### 12", 0, 1),
])
def test_match(output, reference, strict, flexible):
    assert gsm8k.match(output, reference) == {STRICT: strict, FLEX: flexible}


def test_reference_answer():
    assert gsm8k.reference_answer("Each costs 2.\nSo 2*500=<<2*500=1000>>1000.\n#### 1,000") == "1000"
    with pytest.raises(ValueError, match="####"):
        gsm8k.reference_answer("no final line")


@pytest.mark.parametrize("selectable", [True, False])
def test_score_end_to_end_with_stop_sequence(selectable):
    task = get_task("gsm8k")
    docs = build_docs(task, load_task_data(task, str(FIX / "gsm8k.jsonl"), None, 1), 1)
    # every prompt ends in "Answer:"; the scripted model then writes one solution and starts a new question
    model = ScriptedLM({":": " He has 3*4=12 pencils.\n#### 12\n\nQuestion: what next?"}, selectable=selectable)
    out = gsm8k.score(model, ByteTokenizer(), docs, batch_size=3, max_new_tokens=80, progress=False)
    assert out["samples"][0]["output"] == " He has 3*4=12 pencils.\n#### 12\n\n"
    assert [s[STRICT] for s in out["samples"]] == [1.0, 0.0, 0.0, 0.0]
    assert out["metrics"][STRICT] == 0.25 and out["metrics"][FLEX] == 0.25 and out["metrics"]["n"] == 4
    assert [s["reference"] for s in out["samples"]] == ["12", "1250", "-5", "2.5"]

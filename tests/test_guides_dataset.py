"""The dataset guide: reference rationales looked up by prompt from local files through ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_statetune_guides import DatasetOptions, GuideConfig, GuideScoringUnsupported, build_guide
from rl_statetune_guides.dataset_guide import DatasetGuide

ROWS = [
    {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72.\n#### 72",
    },
    {"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"},
]


@pytest.fixture
def gsm8k_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k_mini.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def make(path: Path, **kw: object) -> DatasetGuide:
    guide = build_guide(GuideConfig(backend="dataset", options=DatasetOptions(path=str(path), **kw)))
    assert isinstance(guide, DatasetGuide)
    return guide


def test_lookup_returns_reference(gsm8k_jsonl: Path) -> None:
    guide = make(gsm8k_jsonl)
    assert len(guide) == 2 and guide.supports_scoring is False
    # Surrounding whitespace of the prompt is ignored; max_tokens/temperature do not change the text.
    assert guide.generate(["  What is 2+3?\n", ROWS[0]["question"]], max_tokens=1, temperature=1.0) == [
        ROWS[1]["answer"],
        ROWS[0]["answer"],
    ]


def test_strip_calculator_annotations(gsm8k_jsonl: Path) -> None:
    (text,) = make(gsm8k_jsonl, strip_calculator_annotations=True).generate(["What is 2+3?"])
    assert text == "2+3 = 5\n#### 5"


def test_missing_prompt(gsm8k_jsonl: Path) -> None:
    with pytest.raises(KeyError, match="no reference for prompt 0"):
        make(gsm8k_jsonl).generate(["unknown question"])
    assert make(gsm8k_jsonl, on_missing="empty").generate(["unknown question"]) == [""]


def test_csv_and_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text('prompt,rationale\n"Is 7 prime?","Yes, 7 has no divisors but 1 and 7."\n')
    guide = make(path, prompt_field="prompt", target_field="rationale")
    assert guide.generate(["Is 7 prime?"]) == ["Yes, 7 has no divisors but 1 and 7."]
    with pytest.raises(KeyError, match="no field 'question'"):
        make(path)


def test_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"question": "q", "answer": "first"}\n{"question": "q", "answer": "second"}\n')
    assert make(path).generate(["q"]) == ["first"]
    with pytest.raises(ValueError, match="repeats an earlier prompt"):
        make(path, on_duplicate="error")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset guide file not found"):
        make(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix"):
        make(tmp_path / "d.txt")


def test_score_raises_or_returns_the_constant(gsm8k_jsonl: Path) -> None:
    with pytest.raises(GuideScoringUnsupported, match="match-type reward") as info:
        make(gsm8k_jsonl).score(["What is 2+3?"], ["5"])
    assert isinstance(info.value, NotImplementedError)
    guide = make(gsm8k_jsonl, score_logprob=0.0)
    assert guide.supports_scoring
    (s,) = guide.score(["What is 2+3?"], ["2+3 = 5\n#### 5 "])
    assert s.pieces == ("2+3", " =", " 5", "\n####", " 5", " ") and s.logprobs == (0.0,) * 6

"""Task loading (local jsonl / parquet in the Hub schemas), few-shot selection and exact prompt strings."""

from pathlib import Path

import pytest

from rl_statetune.eval.data import apply_limit, load_task_data
from rl_statetune.eval.fewshot import build_docs, select_examples
from rl_statetune.eval.tasks import GenerationDoc, MultipleChoiceDoc, get_task

FIX = Path(__file__).parent / "fixtures" / "eval"
MMLU_FILES = {"test": str(FIX / "mmlu_test.jsonl"), "dev": str(FIX / "mmlu_dev.jsonl")}


def docs_for(spec, files, num_fewshot=0, limit=None, seed=1234):
    task = get_task(spec)
    return build_docs(task, load_task_data(task, files, limit, num_fewshot), num_fewshot, seed)


def test_mmlu_zero_shot_prompt_and_choices():
    d = docs_for("mmlu", MMLU_FILES)[1]
    assert isinstance(d, MultipleChoiceDoc)
    expected = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                "Which of the following is a field?\nA. Z\nB. Z_4\nC. Q\nD. Z_6\nAnswer:")
    assert d.contexts == (expected,) * 4
    assert d.continuations == (" A", " B", " C", " D")
    assert d.norm_texts == ("A", "B", "C", "D")
    assert d.gold == 2 and d.doc_id == 1


def test_mmlu_fewshot_comes_from_dev_of_the_same_subject_first_n():
    d = docs_for("mmlu", MMLU_FILES, num_fewshot=1)[2]  # anatomy
    assert d.contexts[0] == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Where is the patella located?\nA. Knee\nB. Elbow\nC. Skull\nD. Spine\nAnswer: A\n\n"
        "Which bone is the longest in the human body?\nA. Humerus\nB. Tibia\nC. Femur\nD. Ulna\nAnswer:")
    two = docs_for("mmlu", MMLU_FILES, num_fewshot=2, limit=1)[0]  # abstract algebra: both dev rows, in order
    assert "trivial group have?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\nIs Z_5 a field?" in two.contexts[0]
    with pytest.raises(ValueError, match="more few-shot examples"):
        docs_for("mmlu", MMLU_FILES, num_fewshot=2)  # anatomy has one dev row


def test_arc_prompt_numeric_labels_and_fewshot_excludes_scored_doc():
    docs = docs_for("arc_challenge", str(FIX / "arc_challenge.jsonl"))
    assert docs[2].contexts[0] == "Question: Which is a renewable energy source?\nAnswer:"
    assert docs[2].continuations == (" coal", " natural gas", " wind", " oil")
    assert docs[2].gold == 2  # answerKey "3" among labels "1".."4"
    assert len(docs[1].contexts) == 3 and docs[1].gold == 0
    task = get_task("arc_challenge")
    data = load_task_data(task, str(FIX / "arc_challenge.jsonl"), None, 3)
    examples = select_examples(task, data, 3, seed=0)
    for (doc_id, doc), ex in zip(data.docs, examples):
        assert len(ex) == 3 and doc not in ex  # pool = same file, never the scored row
    shot = docs_for("arc_challenge", str(FIX / "arc_challenge.jsonl"), num_fewshot=1, seed=0)[0].contexts[0]
    first, query = shot.split("\n\n")
    assert query == "Question: Which gas do plants take in from the air for photosynthesis?\nAnswer:"
    assert first.startswith("Question: ") and "\nAnswer: " in first


def test_winogrande_partial_contexts_and_shared_suffix():
    d = docs_for("winogrande", str(FIX / "winogrande.jsonl"))[2]
    assert d.contexts == ("The cup broke when it fell on the floor because the floor",
                          "The cup broke when it fell on the floor because the cup")
    assert d.continuations == (" was made of glass.",) * 2
    assert d.gold == 1
    shot = docs_for("winogrande", str(FIX / "winogrande.jsonl"), num_fewshot=1, seed=3)[0]
    prefix = shot.contexts[0][: -len("The trophy did not fit in the suitcase because the trophy")]
    assert prefix.endswith("\n\n") and prefix.count("\n\n") == 1
    # a few-shot example is the gold option filled in, then " " + the rest of the sentence
    assert prefix in {"Maria lent her bike to Anna because Maria was going to walk anyway.\n\n",
                      "The cup broke when it fell on the floor because the cup was made of glass.\n\n",
                      "Ben asked Carl for advice since Ben had never fixed a car.\n\n"}


def test_gsm8k_prompt_with_fewshot_answers():
    docs = docs_for("gsm8k", str(FIX / "gsm8k.jsonl"), num_fewshot=0)
    assert isinstance(docs[0], GenerationDoc)
    assert docs[0].prompt == "Question: Tom has 3 boxes with 4 pencils each. How many pencils does he have?\nAnswer:"
    shot = docs_for("gsm8k", str(FIX / "gsm8k.jsonl"), num_fewshot=2, seed=1)[3].prompt
    parts = shot.split("\n\n")
    assert len(parts) == 3 and parts[-1].startswith("Question: Half of a 5 liter")
    for p in parts[:2]:
        assert p.startswith("Question: ") and "\nAnswer: " in p and "\n#### " in p


def test_parquet_loads_like_jsonl(tmp_path):
    import datasets

    src = datasets.load_dataset("json", data_files=str(FIX / "arc_challenge.jsonl"), split="train")
    path = tmp_path / "arc.parquet"
    src.to_parquet(str(path))
    a = docs_for("arc_challenge", str(path))
    b = docs_for("arc_challenge", str(FIX / "arc_challenge.jsonl"))
    assert a == b


def test_limit_first_and_stride():
    assert apply_limit(10, 3, "first") == [0, 1, 2]
    assert apply_limit(10, 3, "stride") == [0, 3, 6]
    assert apply_limit(2, 5, "first") == [0, 1]
    docs = docs_for("mmlu", MMLU_FILES, limit=2)  # stride over subjects
    assert [d.doc_id for d in docs] == [0, 2]


def test_bad_input_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown task"):
        get_task("hellaswag")
    bad = tmp_path / "wg.jsonl"
    bad.write_text('{"sentence": "no blank", "option1": "a", "option2": "b"}\n')
    with pytest.raises(ValueError, match="lacks field"):
        docs_for("winogrande", str(bad))
    with pytest.raises(KeyError, match="needs 'test'"):
        docs_for("mmlu", {"dev": MMLU_FILES["dev"]})
    with pytest.raises(FileNotFoundError):
        docs_for("gsm8k", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="one of"):
        docs_for("gsm8k", str(FIX))


def test_hub_loading_asks_for_the_standard_dataset_config_and_splits(monkeypatch):
    import datasets

    calls = []
    local = {"test": MMLU_FILES["test"], "dev": MMLU_FILES["dev"]}

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_json(local[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = docs_for("mmlu", None, num_fewshot=1)
    assert calls == [("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")]
    assert "Answer: A\n\nWhich bone" in docs[2].contexts[0]
    calls.clear()
    docs_for("mmlu:anatomy", None)  # a subject config; no few-shot split needed at 0-shot
    assert calls == [("cais/mmlu", "anatomy", "test")]
    expected = {"gsm8k": ("openai/gsm8k", "main", "test"), "winogrande": ("allenai/winogrande", "winogrande_xl",
                "validation"), "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test")}
    for name, call in expected.items():
        t = get_task(name)
        assert (t.hub_path, t.hub_name, t.eval_split) == call

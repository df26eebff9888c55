"""Local benchmark files for lm-evaluation-harness's own task definitions (the ``custom_dataset`` of the task YAMLs
beside this file): only *where the rows come from* changes, prompts, splits, metrics and filters stay lm-eval's.

Files are the Hugging Face schemas in ``<data root>/benchmarks/<benchmark>/<split>.jsonl``. The data root is the
``data_dir`` task metadata (``lm_eval --metadata '{"data_dir": ...}'``), else ``$RL_STATETUNE_SHARED_DATA``, else
``../shared/data`` (relative to the working directory, the project convention). Every row is validated before any
scoring: a bad row fails with one line naming the file, the line, the key and the fix.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV = "RL_STATETUNE_SHARED_DATA"
DEFAULT_ROOT = "../shared/data"

# benchmark -> {split name used by the lm-eval task: file stem}
SPLITS = {
    "arc_challenge": {"train": "train", "validation": "validation", "test": "test"},
    "mmlu": {"dev": "dev", "test": "test"},
    "winogrande": {"validation": "validation"},
    "gsm8k": {"train": "train", "test": "test"},
}


class DataError(ValueError):
    """A benchmark file is missing, empty or holds a row the task cannot score."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or os.environ.get(ENV) or DEFAULT_ROOT).expanduser()


def benchmark_file(benchmark: str, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    path = data_root(data_dir) / "benchmarks" / benchmark / f"{SPLITS[benchmark][split]}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {benchmark} {split} file; put the benchmark files under <data root>/benchmarks/ or point "
            f"${ENV} (or lm_eval --metadata '{{\"data_dir\": ...}}') at the data root")
    return path


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _check_arc(row: dict) -> str | None:
    ch = row["choices"]
    if not isinstance(ch, dict) or not isinstance(ch.get("text"), list) or not isinstance(ch.get("label"), list):
        return "'choices' must be {\"text\": [...], \"label\": [...]}"
    if len(ch["text"]) != len(ch["label"]) or len(ch["text"]) < 2:
        return f"'choices' needs >= 2 texts with one label each, got {len(ch['text'])} texts, {len(ch['label'])} labels"
    if not all(map(_is_str, ch["text"])):
        return "every choices.text must be a string"
    if row["answerKey"] not in ch["label"]:
        return f"answerKey {row['answerKey']!r} is not one of the labels {ch['label']}"
    return None


def _check_mmlu(row: dict) -> str | None:
    if not isinstance(row["choices"], list) or len(row["choices"]) != 4 or not all(map(_is_str, row["choices"])):
        return "'choices' must be a list of 4 strings (lm-eval's mmlu prompt shows A-D)"
    if not isinstance(row["answer"], int) or isinstance(row["answer"], bool) or not 0 <= row["answer"] <= 3:
        return f"'answer' must be an integer 0-3, got {row['answer']!r}"
    return None


def _check_winogrande(row: dict) -> str | None:
    if row["answer"] not in ("1", "2"):
        return f"'answer' must be \"1\" or \"2\", got {row['answer']!r}"
    if not _is_str(row["sentence"]) or "_" not in row["sentence"]:
        return "'sentence' must be a string with one '_' blank"
    return None


def _check_gsm8k(row: dict) -> str | None:
    if not _is_str(row["answer"]) or "####" not in row["answer"]:
        return "'answer' must be a worked solution ending in '#### N'"
    return None


SCHEMA = {
    "arc_challenge": (("question", "choices", "answerKey"), _check_arc),
    "mmlu": (("question", "subject", "choices", "answer"), _check_mmlu),
    "winogrande": (("sentence", "option1", "option2", "answer"), _check_winogrande),
    "gsm8k": (("question", "answer"), _check_gsm8k),
}


def read_rows(path: Path, benchmark: str) -> list[dict]:
    """Parse and validate every line of a jsonl file (raises DataError naming file, line and key)."""
    keys, check = SCHEMA[benchmark]
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); fix or delete the line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: a row must be a JSON object, got {type(row).__name__}")
            missing = [k for k in keys if row.get(k) is None]
            if missing:
                raise DataError(f"{path}:{n}: row has no {missing[0]!r}; {benchmark} rows need "
                                f"{', '.join(keys)} (the Hugging Face schema)")
            problem = check(row)
            if problem:
                raise DataError(f"{path}:{n}: {problem}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no rows; expected one JSON object per line ({', '.join(keys)})")
    return rows


@lru_cache(maxsize=16)
def _cached_rows(path: str, mtime_ns: int, benchmark: str) -> tuple[dict, ...]:
    return tuple(read_rows(Path(path), benchmark))


def rows(benchmark: str, split: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    path = benchmark_file(benchmark, split, data_dir)
    return list(_cached_rows(str(path), path.stat().st_mtime_ns, benchmark))


def load(benchmark: str, data_dir: str | None = None, subject: str | None = None, **_metadata):
    """``custom_dataset`` for the local task YAMLs: a ``datasets.DatasetDict`` of every split lm-eval's task uses.
    ``subject`` keeps one MMLU subject (lm-eval runs MMLU as one task per subject)."""
    import datasets

    if benchmark not in SPLITS:
        raise DataError(f"unknown benchmark {benchmark!r}; known: {', '.join(SPLITS)}")
    out = {}
    for split in SPLITS[benchmark]:
        rs = rows(benchmark, split, data_dir)
        if subject is not None:
            rs = [r for r in rs if r["subject"] == subject]
            if not rs:
                raise DataError(f"{benchmark_file(benchmark, split, data_dir)}: no rows with subject {subject!r}")
        out[split] = datasets.Dataset.from_list(rs)
    return datasets.DatasetDict(out)


# one entry point per benchmark, so that the YAMLs name them with !function
def arc_challenge(**kw):
    return load("arc_challenge", **kw)


def mmlu(**kw):
    return load("mmlu", **kw)


def winogrande(**kw):
    return load("winogrande", **kw)


def gsm8k(**kw):
    return load("gsm8k", **kw)


# lm-eval 0.4.13 has no plugin discovery, but a task YAML given as ``lm_eval --tasks <path>.yaml`` is loaded (and
# this file imported, by path) before the model is looked up: that import registers the ``rl_statetune`` model, so
# the plain ``lm_eval`` command finds it. A normal import (``rl_statetune.eval.tasks.local_data``) stays light.
if __name__ != "rl_statetune.eval.tasks.local_data":
    try:
        import rl_statetune.eval.harness  # noqa: F401
    except ImportError:  # lm-eval or torch missing: the loaders above still work
        pass

"""Load a task's evaluation docs and few-shot pool, from the Hugging Face Hub or local jsonl / parquet files.

``data_files`` (per task) is either one path / list of paths — the docs are scored from it and few-shot examples
come from the same rows, never the scored one — or a mapping ``{split: path}`` such as
``{"test": "mmlu_test.jsonl", "dev": "mmlu_dev.jsonl"}``, read with the task's usual split names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rl_statetune.eval.tasks import Task

DataFiles = str | Path | Sequence[str | Path] | Mapping[str, str | Path | Sequence[str | Path]]

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class TaskData:
    docs: list[tuple[int, dict]]  # (index in the evaluation split, doc), after the limit
    pool: list[dict]              # few-shot candidates (empty when no few-shot is needed)
    same_pool: bool               # pool is the evaluation split itself: exclude the scored doc by index
    source: str


def _builder(paths: list[str]) -> str:
    kinds = {_BUILDERS.get(Path(p).suffix.lower()) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"data files must all be one of {sorted(_BUILDERS)} files, got {paths}")
    return kinds.pop()


def _as_paths(files) -> list[str]:
    paths = [str(files)] if isinstance(files, (str, Path)) else [str(p) for p in files]
    if not paths:
        raise ValueError("empty list of data files")
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"data file not found: {p}")
    return paths


def _load_local(files) -> list[dict]:
    import datasets

    paths = _as_paths(files)
    return datasets.load_dataset(_builder(paths), data_files=paths, split="train").to_list()


def _load_hub(task: Task, split: str) -> list[dict]:
    import datasets

    return datasets.load_dataset(task.hub_path, task.hub_name, split=split).to_list()


def apply_limit(n_docs: int, limit: int | None, strategy: str) -> list[int]:
    """Indices of the docs to score: the first ``limit``, or ``limit`` evenly spaced ones ("stride")."""
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if strategy == "first":
        return list(range(limit))
    if strategy == "stride":
        return [i * n_docs // limit for i in range(limit)]
    raise ValueError(f"unknown limit strategy {strategy!r}")


def load_task_data(task: Task, data_files: DataFiles | None = None, limit: int | None = None,
                   num_fewshot: int = 0) -> TaskData:
    if isinstance(data_files, Mapping):
        if task.eval_split not in data_files:
            raise KeyError(f"{task.name}: data_files has splits {sorted(data_files)}, "
                           f"needs {task.eval_split!r} (few-shot split: {task.fewshot_split!r})")
        rows = _load_local(data_files[task.eval_split])
        source = str(data_files[task.eval_split])
        fewshot_files = data_files.get(task.fewshot_split)
        same = fewshot_files is None
        pool = rows if same else (_load_local(fewshot_files) if num_fewshot else [])
    elif data_files is not None:
        rows = _load_local(data_files)
        source, pool, same = str(data_files), rows, True
    else:
        rows = _load_hub(task, task.eval_split)
        source = f"{task.hub_path}:{task.hub_name}:{task.eval_split}"
        pool = _load_hub(task, task.fewshot_split) if num_fewshot else []
        same = False
    if not rows:
        raise ValueError(f"{task.name}: no documents in {source}")
    for i, doc in enumerate(rows[:1] + pool[:1]):
        task.validate(doc, f"{source} row 0" if i == 0 else "few-shot row 0")
    keep = apply_limit(len(rows), limit, task.limit_strategy)
    return TaskData([(i, rows[i]) for i in keep], pool if num_fewshot else [], same, source)

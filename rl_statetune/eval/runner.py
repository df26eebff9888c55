"""``run_eval``: load each task's docs, build prompts, score the model (optionally from a tuned initial state)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rl_statetune.eval import gsm8k, multiple_choice
from rl_statetune.lm import InitStateFn, Tokenizer
from rl_statetune.eval.data import DataFiles, load_task_data
from rl_statetune.eval.fewshot import build_docs
from rl_statetune.eval.tasks import get_task


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ValueError("no tasks given")
    for n in names:
        get_task(n)  # fail early on a typo
    return names


def run_eval(model: Any, tokenizer: Tokenizer, tasks: str | Sequence[str], limit: int | None = None,
             num_fewshot: int | None = None, data_files: Mapping[str, DataFiles] | None = None,
             init_state_fn: InitStateFn | None = None, batch_size: int = 8, *, max_new_tokens: int = 256,
             seed: int = 1234, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (names from ``rl_statetune.eval.tasks.TASKS``, or ``name:hub_config``).

    ``num_fewshot`` None = each task's default (GSM8K 5, others 0). ``data_files`` maps a task name to local
    files (see ``rl_statetune.eval.data``); tasks without an entry load from the Hub.
    Returns ``{"results": {task: metrics}, "samples": {task: [...]}, "config": {...}}``.
    """
    names = parse_tasks(tasks)
    data_files = dict(data_files or {})
    results, samples, shots = {}, {}, {}
    for spec in names:
        task = get_task(spec)
        k = task.default_num_fewshot if num_fewshot is None else num_fewshot
        files = data_files.get(spec, data_files.get(task.name))
        data = load_task_data(task, files, limit, k)
        docs = build_docs(task, data, k, seed)
        t0 = time.perf_counter()
        if task.kind == "generate_until":
            out = gsm8k.score(model, tokenizer, docs, init_state_fn, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, progress=progress)
        else:
            out = multiple_choice.score(model, tokenizer, docs, init_state_fn, batch_size=batch_size,
                                        metrics=task.metrics, progress=progress, desc=spec)
        results[spec] = {**out["metrics"], "num_fewshot": k, "primary_metric": task.primary_metric,
                         "source": data.source, "seconds": round(time.perf_counter() - t0, 3)}
        samples[spec] = out["samples"]
        shots[spec] = k
    config = {"tasks": names, "limit": limit, "num_fewshot": shots, "batch_size": batch_size,
              "max_new_tokens": max_new_tokens, "seed": seed, "init_state": init_state_fn is not None}
    return {"results": results, "samples": samples, "config": config}

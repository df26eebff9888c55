"""Few-shot example selection and assembly of scored docs (lm-evaluation-harness samplers).

"random": a ``random.Random(seed)`` draws ``k`` examples per doc, in doc order (one extra is drawn and the scored
doc dropped when the pool is the evaluation split). "first_n": the first ``k`` pool docs (MMLU's dev examples),
taken within the doc's group (its subject).
"""

from __future__ import annotations

import random

from rl_statetune.eval.data import TaskData
from rl_statetune.eval.tasks import GenerationDoc, MultipleChoiceDoc, Task


def _grouped(task: Task, pool: list[dict]) -> dict:
    groups: dict = {}
    for j, doc in enumerate(pool):
        groups.setdefault(task.fewshot_group(doc), []).append(j)
    return groups


def select_examples(task: Task, data: TaskData, num_fewshot: int,
                    seed: int = 1234) -> list[list[dict]]:
    """For each doc in ``data.docs``, the few-shot examples to prepend."""
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if num_fewshot == 0:
        return [[] for _ in data.docs]
    groups = _grouped(task, data.pool)
    rng = random.Random(seed)
    out = []
    for doc_id, doc in data.docs:
        candidates = groups.get(task.fewshot_group(doc), [])
        n = num_fewshot + 1 if data.same_pool else num_fewshot
        if len(candidates) < num_fewshot + (1 if data.same_pool and doc_id in candidates else 0):
            raise ValueError(f"{task.name}: {num_fewshot}-shot needs more few-shot examples than the "
                             f"{len(candidates)} in the pool for doc {doc_id}")
        n = min(n, len(candidates))
        picked = candidates[:n] if task.fewshot_sampler == "first_n" else rng.sample(candidates, n)
        picked = [j for j in picked if not (data.same_pool and j == doc_id) and data.pool[j] != doc]
        out.append([data.pool[j] for j in picked[:num_fewshot]])
    return out


def build_docs(task: Task, data: TaskData, num_fewshot: int,
               seed: int = 1234) -> list[MultipleChoiceDoc | GenerationDoc]:
    examples = select_examples(task, data, num_fewshot, seed)
    docs = []
    for (doc_id, doc), ex in zip(data.docs, examples):
        task.validate(doc, f"{data.source} row {doc_id}")
        docs.append(task.build(doc, doc_id, ex))
    return docs

"""Aggregation of per-doc scores: mean and its standard error (as lm-evaluation-harness reports them)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("mean of no values")
    return sum(xs) / len(xs)


def stderr_of_mean(xs: Sequence[float]) -> float:
    """Sample standard deviation / sqrt(n); NaN for fewer than two values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def aggregate(per_doc: Sequence[dict[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    """{metric: mean, metric_stderr: stderr, n: count} over per-doc metric values."""
    out: dict[str, float] = {}
    for m in metrics:
        xs = [d[m] for d in per_doc]
        out[m] = mean(xs)
        out[f"{m}_stderr"] = stderr_of_mean(xs)
    out["n"] = len(per_doc)
    return out

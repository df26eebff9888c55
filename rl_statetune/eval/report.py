"""Report writers across runs: JSON (all numbers + config), a markdown table with deltas against a base run
followed by lm-eval's own ``make_table`` of each run, and a PNG bar plot of each task's primary metric per named
state. Per-doc samples are lm-eval's own files (``EvaluationTracker``, see eval.cli)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Runs = Mapping[str, Mapping[str, Any]]
"""{run name: {"results": {task: metrics}, "tables": {task: lm-eval's make_table}, "config": {...}}} (eval.cli)."""


def metric_names(task_result: Mapping[str, Any]) -> list[str]:
    """Metrics reported with a standard error, in their original order."""
    return [k for k in task_result if f"{k}_stderr" in task_result]


def deltas(runs: Runs, base: str) -> dict[str, dict[str, dict[str, float]]]:
    """{run: {task: {metric: run - base}}} for every run but the base, on the tasks both have."""
    if base not in runs:
        raise KeyError(f"base run {base!r} not among {list(runs)}")
    ref = runs[base]["results"]
    out: dict = {}
    for name, run in runs.items():
        if name == base:
            continue
        out[name] = {task: {m: res[m] - ref[task][m] for m in metric_names(res) if m in ref[task]}
                     for task, res in run["results"].items() if task in ref}
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def markdown_table(runs: Runs, base: str | None = None) -> str:
    """Rows = (task, metric), columns = runs; values in percent with the standard error, and the delta vs base."""
    names = list(runs)
    if not names:
        raise ValueError("no runs to tabulate")
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r["results"]))
    diff = deltas(runs, base) if base is not None else {}
    header = ["Task", "Metric", "n"] + [n if n == base or base is None else f"{n} (Δ vs {base})" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        first = next(r["results"][task] for r in runs.values() if task in r["results"])
        for m in metric_names(first):
            cells = [task, m, str(first.get("n", ""))]
            for name in names:
                res = runs[name]["results"].get(task)
                if res is None or m not in res:
                    cells.append("–")
                    continue
                cell = f"{_pct(res[m])} ± {_pct(res[f'{m}_stderr'])}"
                if name in diff and task in diff[name] and m in diff[name][task]:
                    cell += f" ({100 * diff[name][task][m]:+.2f})"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(runs: Runs, path: str | Path) -> Path:
    """Grouped bars: one group per task (its primary metric), one bar per run, with stderr whiskers."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    names = list(runs)
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r["results"]))
    fig = Figure(figsize=(max(4.0, 1.6 * len(tasks) * max(1, len(names)) ** 0.5 + 1.5), 3.6), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ys, errs = [], [], []
        for i, task in enumerate(tasks):
            res = runs[name]["results"].get(task)
            if res is None:
                continue
            m = res.get("primary_metric") or metric_names(res)[0]
            err = res.get(f"{m}_stderr", float("nan"))
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(100 * res[m])
            errs.append(0.0 if math.isnan(err) else 100 * err)
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=2, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    labels = []
    for t in tasks:
        res = next(r["results"][t] for r in runs.values() if t in r["results"])
        labels.append(f"{t}\n({res.get('primary_metric', '')})")
    ax.set_xticks(range(len(tasks)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(out_dir: str | Path, runs: Runs, base: str | None = None,
                 extra_config: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write results.json, results.md (the comparison table, then each run's lm-eval tables) and accuracy.png under
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "config": {**next(iter(runs.values()))["config"], **(extra_config or {})},
        "results": {name: run["results"] for name, run in runs.items()},
    }
    if base is not None:
        report["base"] = base
        report["deltas"] = deltas(runs, base)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "png": out / "accuracy.png"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    md = markdown_table(runs, base)
    for name, run in runs.items():
        for task, table in run.get("tables", {}).items():
            md += f"\n### {name}: {task} (lm-eval)\n\n{table}"
    paths["markdown"].write_text(md)
    plot_accuracy(runs, paths["png"])
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

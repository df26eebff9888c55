"""Report writers: the markdown table with deltas, and the files write_report leaves (numbers, tables, PNG)."""

import json

import pytest

from rl_statetune.eval.report import deltas, markdown_table, write_report


def fake_run(name, results):
    return {"results": results, "tables": {t: f"| lm-eval table of {name}: {t} |\n" for t in results},
            "config": {"tasks": list(results), "limit": None}}


def test_markdown_table_exact_and_deltas():
    base = fake_run("base", {"arc_challenge": {"acc": 0.25, "acc_stderr": 0.25, "acc_norm": 0.5,
                                               "acc_norm_stderr": 0.2887, "n": 4, "primary_metric": "acc_norm"}})
    tuned = fake_run("tuned", {"arc_challenge": {"acc": 0.5, "acc_stderr": 0.2887, "acc_norm": 0.25,
                                                 "acc_norm_stderr": 0.25, "n": 4, "primary_metric": "acc_norm"}})
    runs = {"base": base, "tuned": tuned}
    assert deltas(runs, "base") == {"tuned": {"arc_challenge": {"acc": 0.25, "acc_norm": -0.25}}}
    assert markdown_table(runs, "base") == (
        "| Task | Metric | n | base | tuned (Δ vs base) |\n"
        "|---|---|---|---|---|\n"
        "| arc_challenge | acc | 4 | 25.00 ± 25.00 | 50.00 ± 28.87 (+25.00) |\n"
        "| arc_challenge | acc_norm | 4 | 50.00 ± 28.87 | 25.00 ± 25.00 (-25.00) |\n")
    with pytest.raises(KeyError, match="base run"):
        deltas(runs, "nope")


def test_write_report_files_contain_the_numbers(tmp_path):
    runs = {"base": fake_run("base", {"mmlu": {"acc": 0.25, "acc_stderr": 0.25, "n": 4, "primary_metric": "acc"}}),
            "tuned": fake_run("tuned", {"mmlu": {"acc": 0.75, "acc_stderr": 0.25, "n": 4, "primary_metric": "acc"}})}
    paths = write_report(tmp_path, runs, base="base")
    report = json.loads(paths["json"].read_text())
    assert report["results"]["tuned"]["mmlu"]["acc"] == 0.75
    assert report["deltas"]["tuned"]["mmlu"]["acc"] == pytest.approx(0.5)
    md = paths["markdown"].read_text()
    assert "| mmlu | acc | 4 |" in md and "75.00 ± 25.00 (+50.00)" in md
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert md.index("(+50.00)") < md.index("### tuned: mmlu (lm-eval)") < md.index("| lm-eval table of tuned: mmlu |")

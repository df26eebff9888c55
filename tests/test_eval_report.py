"""run_eval over all four tasks (local fixtures, fake model), report files, and the eval CLI."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from rl_statetune.eval import cli
from rl_statetune.eval.fakes import BiasBigramLM, ByteTokenizer, FakeState
from rl_statetune.eval.report import deltas, markdown_table, write_report
from rl_statetune.eval.runner import run_eval

FIX = Path(__file__).parent / "fixtures" / "eval"
DATA = {"mmlu": {"test": str(FIX / "mmlu_test.jsonl"), "dev": str(FIX / "mmlu_dev.jsonl")},
        "gsm8k": str(FIX / "gsm8k.jsonl"), "winogrande": str(FIX / "winogrande.jsonl"),
        "arc_challenge": str(FIX / "arc_challenge.jsonl")}
TASKS = "mmlu,gsm8k,winogrande,arc_challenge"


def fake_run(name, results):
    return {"results": results, "samples": {t: [{"doc_id": 0}] for t in results},
            "config": {"tasks": list(results), "limit": None}}


def test_run_eval_all_tasks_with_fixtures():
    model = BiasBigramLM(seed=0)
    out = run_eval(model, ByteTokenizer(), TASKS, limit=3, num_fewshot=1, data_files=DATA, batch_size=4,
                   max_new_tokens=8, progress=False)
    assert list(out["results"]) == TASKS.split(",")
    for task, res in out["results"].items():
        assert res["n"] == 3 and res["num_fewshot"] == 1 and len(out["samples"][task]) == 3
        m = res["primary_metric"]
        assert 0.0 <= res[m] <= 1.0
        assert res[m] == pytest.approx(sum(s[m] for s in out["samples"][task]) / 3)
    assert out["results"]["arc_challenge"]["primary_metric"] == "acc_norm"
    assert set(out["results"]["winogrande"]) >= {"acc", "acc_stderr"} and "acc_norm" not in out["results"]["winogrande"]
    assert out["config"]["num_fewshot"] == dict.fromkeys(TASKS.split(","), 1)
    with pytest.raises(ValueError, match="5-shot needs more"):  # gsm8k defaults to 5-shot; the file has 4 rows
        run_eval(model, ByteTokenizer(), ["gsm8k"], data_files=DATA, progress=False)


def test_run_eval_rejects_bad_arguments():
    with pytest.raises(KeyError, match="unknown task"):
        run_eval(BiasBigramLM(), ByteTokenizer(), "mmlu,hellaswag", data_files=DATA)
    with pytest.raises(ValueError, match="batch_size"):
        run_eval(BiasBigramLM(), ByteTokenizer(), "arc_challenge", data_files=DATA, batch_size=0, progress=False)


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
    model = BiasBigramLM(seed=0, decay=1.0)
    bias = torch.zeros(257)
    bias[ByteTokenizer().encode("C")[0]] = 50.0
    runs = {name: run_eval(model, ByteTokenizer(), "mmlu,arc_challenge", data_files=DATA, init_state_fn=fn,
                           progress=False)
            for name, fn in [("base", None), ("tuned", lambda b: FakeState(bias.expand(b, -1).clone()))]}
    assert runs["tuned"]["results"]["mmlu"]["acc"] == 0.75  # always "C"; gold is C for 3 of the 4 docs
    paths = write_report(tmp_path, runs, base="base")
    report = json.loads(paths["json"].read_text())
    assert report["results"]["tuned"]["mmlu"]["acc"] == 0.75
    delta = 0.75 - runs["base"]["results"]["mmlu"]["acc"]
    assert report["deltas"]["tuned"]["mmlu"]["acc"] == pytest.approx(delta)
    md = paths["markdown"].read_text()
    assert "| mmlu | acc | 4 |" in md and f"75.00 ± 25.00 ({100 * delta:+.2f})" in md
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = (tmp_path / "samples" / "tuned" / "mmlu.jsonl").read_text().splitlines()
    assert [json.loads(r)["pred"] for r in rows] == [2, 2, 2, 2]


def test_parse_data_files():
    assert cli.parse_data_files(["gsm8k=a.jsonl", "mmlu@test=t.jsonl", "mmlu@dev=d.jsonl"]) == {
        "gsm8k": "a.jsonl", "mmlu": {"test": "t.jsonl", "dev": "d.jsonl"}}
    for bad in (["gsm8k"], ["gsm8k=a", "gsm8k=b"], ["mmlu=a", "mmlu@dev=b"]):
        with pytest.raises(ValueError):
            cli.parse_data_files(bad)


def test_eval_main_compare(tmp_path, monkeypatch):
    bias = torch.zeros(257)
    bias[ByteTokenizer().encode("C")[0]] = 50.0
    model = BiasBigramLM(seed=0, decay=1.0)
    loaded = {}

    def fake_load(model_path, state_paths, device="cpu"):
        loaded.update(model=model_path, states=state_paths)
        names = cli._run_names(state_paths)
        return model, ByteTokenizer(), {n: (lambda b: FakeState(bias.expand(b, -1).clone())) for n in names}

    monkeypatch.setattr(cli, "_load", fake_load)
    parser = cli.add_eval_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "m.pth", "--state", "runs/a/state.pth", "--state", "runs/b/state.pth",
                              "--tasks", "mmlu", "--data-file", f"mmlu@test={DATA['mmlu']['test']}",
                              "--out", str(tmp_path), "--compare", "--no-progress"])
    assert cli.eval_main(args) == 0
    assert loaded == {"model": "m.pth", "states": ["runs/a/state.pth", "runs/b/state.pth"]}
    report = json.loads((tmp_path / "results.json").read_text())
    assert list(report["results"]) == ["base", "state", "state_2"] and report["base"] == "base"
    assert report["results"]["state"]["mmlu"]["acc"] == 0.75
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert "state_2 (Δ vs base)" in (tmp_path / "results.md").read_text()


def test_cli_end_to_end_on_a_real_checkpoint_and_world_tokenizer(tmp_path):
    """The real ``_load``: a tiny random RWKV-7 saved as a BlinkDL .pth, a state saved by ``save_state``, the
    world tokenizer; base vs tuned with --compare."""
    from rl_statetune.init import init_rwkv7
    from rl_statetune.model import RWKV7Config
    from rl_statetune.state import save_state

    cfg = RWKV7Config(vocab_size=65536, n_embd=32, n_layer=1, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=8,
                      dim_ffn=64)
    torch.save(init_rwkv7(cfg, seed=0, noise=0.1).state_dict(), tmp_path / "tiny.pth")
    save_state(tmp_path / "tuned.pth", torch.randn(cfg.state_shape(), generator=torch.Generator().manual_seed(0)))
    out = tmp_path / "out"
    rc = cli.main(["--model", str(tmp_path / "tiny.pth"), "--state", str(tmp_path / "tuned.pth"), "--compare",
                   "--tasks", "arc_challenge,gsm8k", "--limit", "2", "--num-fewshot", "1", "--max-new-tokens", "4",
                   "--no-progress", "--out", str(out),
                   "--data-file", f"arc_challenge={DATA['arc_challenge']}", "--data-file", f"gsm8k={DATA['gsm8k']}"])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["model"] == str(tmp_path / "tiny.pth") and list(report["results"]) == ["base", "tuned"]
    assert report["results"]["tuned"]["arc_challenge"]["n"] == 2 and report["results"]["base"]["gsm8k"]["n"] == 2

    def lls(run):
        rows = (out / "samples" / run / "arc_challenge.jsonl").read_text().splitlines()
        return [json.loads(r)["loglikelihoods"] for r in rows]

    base, tuned = lls("base"), lls("tuned")
    assert [len(x) for x in base] == [4, 3] and all(math.isfinite(v) and v < 0 for x in base for v in x)
    assert max(abs(a - b) for x, y in zip(base, tuned) for a, b in zip(x, y)) > 1e-4  # the state is applied

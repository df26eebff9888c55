"""``rl-statetune eval`` over lm-eval: bad input ends in one line naming file/line/key and exit 2 (issue 16), each
finished task is on disk before a later one fails, and the report's numbers are lm-eval's own (RWKV and hf)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from rl_statetune.eval import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RL_STATETUNE_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
need_data = pytest.mark.skipif(not (DATA / "benchmarks").is_dir(),
                               reason=f"real benchmark files not found at {DATA}/benchmarks "
                                      "(set RL_STATETUNE_SHARED_DATA to the shared data root)")

ARC = {"id": "x", "question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]},
       "answerKey": "B"}
GSM = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write(root: Path, benchmark: str, split: str, lines: list) -> Path:
    p = root / "benchmarks" / benchmark / f"{split}.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def small_data(root: Path) -> Path:
    for split in ("train", "validation", "test"):
        write(root, "arc_challenge", split, [ARC, ARC])
    for split in ("train", "test"):
        write(root, "gsm8k", split, [GSM] * 6)
    write(root, "winogrande", "validation",
          [{"qID": "q", "sentence": "The cup is in the box because _ is small.", "option1": "cup", "option2": "box",
            "answer": "1"}] * 2)
    return root


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err


@pytest.mark.parametrize("bench,split,lines,expect", [
    ("gsm8k", "test", [GSM, {"question": "q"}], r"gsm8k/test.jsonl:2: row has no 'answer'"),
    ("arc_challenge", "test", [ARC, {k: v for k, v in ARC.items() if k != "answerKey"}],
     r"arc_challenge/test.jsonl:2: row has no 'answerKey'"),
    ("arc_challenge", "test", [{**ARC, "answerKey": "E"}], r"test.jsonl:1: answerKey 'E' is not one of the labels"),
    ("arc_challenge", "validation", [], r"validation.jsonl holds no rows"),
    ("gsm8k", "train", [GSM, '{"question": "q", "answer": '], r"gsm8k/train.jsonl:2: not valid JSON"),
])
def test_bad_rows_end_in_one_line_naming_file_and_line(tmp_path, capsys, bench, split, lines, expect):
    root = small_data(tmp_path / "data")
    write(root, bench, split, lines)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "--model", "embedded", "--tasks", "arc_challenge,gsm8k", "--data-dir", str(root),
                        "--out", str(out), "--no-progress")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("rl-statetune eval: error: ") and __import__("re").search(expect, err[0]), err[0]
    assert "Traceback" not in err[0] and not out.exists()  # validated before any scoring


def test_unknown_task_and_missing_files(tmp_path, capsys):
    code, err = run_cli(capsys, "--model", "embedded", "--tasks", "arc_challenge,hellaswag", "--out", str(tmp_path))
    assert code == 2 and err == ["rl-statetune eval: error: unknown eval task 'hellaswag' in --tasks; choose from "
                                 "arc_challenge, mmlu, winogrande, gsm8k"]
    code, err = run_cli(capsys, "--model", "embedded", "--tasks", "mmlu", "--data-dir", str(tmp_path / "none"),
                        "--out", str(tmp_path))
    assert code == 2 and len(err) == 1 and "none/benchmarks/mmlu/dev.jsonl: no mmlu dev file" in err[0]


def test_nan_state_is_one_line_exit_2(tmp_path, capsys):
    from rl_statetune.checkpoint import load_model
    from rl_statetune.state import state_to_dict

    shape = load_model("embedded").config.state_shape()
    torch.save(state_to_dict(torch.full(shape, float("nan"))), tmp_path / "nan.pth")  # save_state refuses NaN
    code, err = run_cli(capsys, "--model", "embedded", "--state", str(tmp_path / "nan.pth"), "--tasks",
                        "arc_challenge", "--data-dir", str(small_data(tmp_path / "data")), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and "nan.pth: 'blocks.0.att.time_state' holds NaN" in err[0], err


def test_each_finished_task_is_written_before_a_later_failure(tmp_path, monkeypatch):
    real, calls = cli.run_task, []

    def flaky(lm, task, args, tm, tracker=None):
        calls.append(task)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(lm, task, args, tm, tracker)

    monkeypatch.setattr(cli, "run_task", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(["--model", "embedded", "--tasks", "arc_challenge,winogrande", "--data-dir",
                  str(small_data(tmp_path / "data")), "--out", str(out), "--no-progress"])
    report = json.loads((out / "results.json").read_text())
    assert list(report["results"]["base"]) == ["arc_challenge"] and report["results"]["base"]["arc_challenge"]["n"] == 2
    # lm-eval's own files, as `lm_eval --output_path OUT/lm_eval --log_samples` writes them
    (res,) = (out / "lm_eval" / "base").glob("results_*.json")
    lm = json.loads(res.read_text())
    assert lm["results"]["arc_challenge"]["acc,none"] == report["results"]["base"]["arc_challenge"]["acc"]
    assert lm["n-samples"]["arc_challenge"]["effective"] == 2 and lm["model_name"] == "base"
    (samples,) = (out / "lm_eval" / "base").glob("samples_arc_challenge_*.jsonl")
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == 2
    # what our old samples lost: the prompt, the request arguments and the raw responses
    assert "Which is a metal?" in rows[0]["arguments"]["gen_args_0"]["arg_0"] and len(rows[0]["resps"]) == 2
    assert rows[0]["doc"]["question"] == "Which is a metal?" and "prompt_hash" in rows[0]


def _lm_eval_direct(model, model_args, task, limit):
    import lm_eval

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[cli.Path(cli.TASKS[task].yaml).stem],
                                   limit=limit, task_manager=cli.task_manager(), verbosity="ERROR",
                                   fewshot_random_seed=1234)


@need_data
def test_report_numbers_are_lm_evals_own_for_rwkv_with_state_and_an_hf_guide(tmp_path, monkeypatch, smollm2_dir):
    """The table the CLI prints = lm_eval.simple_evaluate(model="rl_statetune"/"hf") on the same local data."""
    from rl_statetune.state import save_state
    from rl_statetune.checkpoint import load_model

    monkeypatch.setenv("RL_STATETUNE_SHARED_DATA", str(DATA))
    shape = load_model("embedded").config.state_shape()
    state = tmp_path / "tuned.pth"
    save_state(state, 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    out = tmp_path / "out"
    assert cli.main(["--model", "embedded", "--state", str(state), "--model", f"hf:{smollm2_dir}", "--tasks",
                     "arc_challenge", "--limit", "4", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())["results"]
    direct = {"tuned": _lm_eval_direct("rl_statetune", f"pretrained=embedded,state={state}", "arc_challenge", 4),
              f"hf:{Path(smollm2_dir).name}": _lm_eval_direct(
                  "hf", f"pretrained={smollm2_dir},dtype=float32,device=cpu", "arc_challenge", 4)}
    assert set(report) == set(direct)
    for name, res in direct.items():
        want = res["results"]["arc_challenge"]
        got = report[name]["arc_challenge"]
        assert got["n"] == 4
        assert (got["acc"], got["acc_norm"]) == (want["acc,none"], want["acc_norm,none"]), name
        assert got["acc_stderr"] == pytest.approx(want["acc_stderr,none"])
    md = (out / "results.md").read_text()
    assert "tuned" in md and "hf:" in md  # one comparison table


def _no_scoring(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded / a task was scored")

    monkeypatch.setattr(cli, "make_lm", refuse)
    monkeypatch.setattr(cli, "run_task", refuse)


@pytest.mark.parametrize("flag,value", [("--limit", "0"), ("--limit", "-1"), ("--max-new-tokens", "0"),
                                        ("--batch-size", "0"), ("--num-fewshot", "-1")])
def test_bad_counts_are_refused_before_loading_anything(tmp_path, capsys, monkeypatch, flag, value):
    """Issue 24.7 / 24.12: --limit 0 / -1 used to reach lm-eval (20-30 s, its internal messages); --max-new-tokens 0
    became lm-eval's 256."""
    _no_scoring(monkeypatch)
    code, err = run_cli(capsys, "--model", "embedded", "--tasks", "gsm8k", "--data-dir",
                        str(small_data(tmp_path / "data")), "--out", str(tmp_path / "o"), flag, value)
    assert code == 2 and flag in err[-1] and ">=" in err[-1], err


def test_out_naming_a_file_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    """Issue 24.8: the bare [Errno 17] came after scoring, and the scores were lost."""
    _no_scoring(monkeypatch)
    (tmp_path / "taken").write_text("mine")
    code, err = run_cli(capsys, "--model", "embedded", "--tasks", "gsm8k", "--data-dir",
                        str(small_data(tmp_path / "data")), "--out", str(tmp_path / "taken"))
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "is a file" in err[0], err
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_diverged_state_in_generate_until_is_named(tmp_path, capsys):
    """Issue 24.2: |S0| ~ 1e20 is finite (loads) but every logit is NaN: gsm8k's answers were empty, exit 0."""
    from rl_statetune.checkpoint import load_model
    from rl_statetune.state import save_state

    shape = load_model("embedded").config.state_shape()
    big = save_state(tmp_path / "big.pth", torch.full(shape, 1e20))
    code, err = run_cli(capsys, "--model", "embedded", "--state", str(big), "--tasks", "gsm8k", "--limit", "1",
                        "--num-fewshot", "0", "--max-new-tokens", "2", "--data-dir",
                        str(small_data(tmp_path / "data")), "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and "big.pth" in err[-1] and "NaN or inf" in err[-1], err


def test_no_progress_and_no_git_noise_outside_a_checkout(tmp_path):
    """Issue 24.7 / 24.12: a real `rl-statetune eval` run from a folder outside any git checkout, --no-progress:
    no progress bar (lm-eval's "Building contexts" had one) and no `fatal: not a git repository`."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "rl-statetune"
    res = subprocess.run([str(exe), "eval", "--model", "embedded", "--tasks", "gsm8k", "--limit", "1",
                          "--num-fewshot", "0", "--max-new-tokens", "2", "--data-dir", str(small_data(tmp_path / "d")),
                          "--out", str(tmp_path / "o"), "--no-progress"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fatal:" not in res.stderr and "it/s]" not in res.stderr and "%|" not in res.stderr, res.stderr
    assert (tmp_path / "o" / "results.json").exists()


def test_apply_chat_template_reaches_lm_eval_and_its_samples(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["--model", "embedded", "--tasks", "arc_challenge", "--data-dir",
                     str(small_data(tmp_path / "data")), "--out", str(out), "--no-progress",
                     "--apply-chat-template"]) == 0
    (samples,) = (out / "lm_eval" / "base").glob("samples_arc_challenge_*.jsonl")
    prompt = json.loads(samples.read_text().splitlines()[0])["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("User: Question: Which is a metal?") and prompt.endswith("\n\nAssistant:")
    (res,) = (out / "lm_eval" / "base").glob("results_*.json")
    assert "Assistant:" in json.loads(res.read_text())["chat_template"]
    # --no-progress switched tqdm off for the run only: the rest of the process keeps its bars
    from tqdm import tqdm

    bar = tqdm(total=1)
    assert not bar.disable and "TQDM_DISABLE" not in os.environ
    bar.close()


def test_what_the_rwkv_model_cannot_honour_is_refused_in_one_line():
    from lm_eval.api.instance import Instance

    from rl_statetune.eval.harness import RWKVStateLM

    with pytest.raises(ValueError, match="batch_size=auto:4 is not supported"):
        RWKVStateLM(pretrained="embedded", batch_size="auto:4")
    with pytest.raises(ValueError, match="unknown model_args for the rl_statetune model: temperture"):
        RWKVStateLM(pretrained="embedded", temperture=0.5)
    lm = RWKVStateLM(pretrained="embedded", batch_size=2, progress=False)
    req = Instance("generate_until", {}, ("Q: 2+3=", {"until": ["\n"], "top_k": 5, "max_gen_toks": 4}), 0)
    with pytest.raises(ValueError, match=r"generation settings \['top_k'\] are not supported"):
        lm.generate_until([req])
    # the aliases lm-eval normalises are honoured, not dropped: max_new_tokens is max_gen_toks
    ok = Instance("generate_until", {}, ("Q: 2+3=", {"until": [], "max_new_tokens": 3}), 0)
    from rl_statetune.generation import generate

    assert lm.generate_until([ok]) == generate(lm.model, lm.tokenizer, ["Q: 2+3="], 3, stop=())


ARC4 = [{"id": f"q{i}", "question": q, "choices": {"text": c, "label": list("ABCD")}, "answerKey": k}
        for i, (q, c, k) in enumerate([
            ("Which is a metal?", ["wood", "iron", "paper", "glass"], "B"),
            ("Which animal can fly?", ["a dog", "a fish", "a bird", "a cow"], "C"),
            ("What do plants need to grow?", ["sunlight", "sand only", "darkness", "plastic"], "A")])]
GSM3 = [{"question": q, "answer": a} for q, a in [
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8\n#### 8"),
    ("A box holds 4 pens. How many pens are in 2 boxes?", "4 * 2 = 8\n#### 8"),
    ("Sara had 10 sweets and ate 3. How many are left?", "10 - 3 = 7\n#### 7")]]


def _samples(out: Path, task: str) -> list[dict]:
    (f,) = (out / "lm_eval" / "base").glob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(x) for x in f.read_text().splitlines()), key=lambda r: r["doc_id"])


def test_eval_cli_in_bfloat16_matches_float32_with_and_without_the_prefix_cache(tmp_path):
    """`rl-statetune eval --dtype bfloat16` end to end on the embedded model: arc_challenge's log-likelihoods
    (lm-eval's loglikelihood requests) within 2 % (+ 0.05 absolute) of float32's and the same accuracy, and gsm8k's
    greedy answers (generate_until) identical, with the prefix cache on and off."""
    data = tmp_path / "data"
    for split in ("train", "validation", "test"):
        write(data, "arc_challenge", split, ARC4)
    for split in ("train", "test"):
        write(data, "gsm8k", split, GSM3)
    runs = {}
    # generate_until does not use the prefix cache: gsm8k runs once per dtype
    for name, extra in {"float32": ["--tasks", "arc_challenge,gsm8k"],
                        "bfloat16": ["--tasks", "arc_challenge,gsm8k", "--dtype", "bfloat16"],
                        "bfloat16-no-cache": ["--tasks", "arc_challenge", "--dtype", "bfloat16",
                                              "--no-prefix-cache"]}.items():
        out = tmp_path / name
        assert cli.main(["--model", "embedded", "--num-fewshot", "0", "--max-new-tokens", "16", "--batch-size", "4",
                         "--data-dir", str(data), "--out", str(out), "--no-progress", *extra]) == 0
        report = json.loads((out / "results.json").read_text())["results"]["base"]
        lls = [float(r[0][0]) for s in _samples(out, "arc_challenge") for r in s["resps"]]
        answers = ([s["resps"][0][0] for s in _samples(out, "gsm8k") if s["filter"] == "strict-match"]
                   if "gsm8k" in extra[1] else None)
        runs[name] = (report["arc_challenge"]["acc"], lls, answers)
    acc32, ll32, ans32 = runs["float32"]
    assert len(ll32) == 12 and all(x < 0 for x in ll32) and len(ans32) == 3 and all(len(a) > 5 for a in ans32)
    for name in ("bfloat16", "bfloat16-no-cache"):
        acc, lls, answers = runs[name]
        assert lls == pytest.approx(ll32, rel=0.02, abs=0.05), name
        assert lls != ll32, name                     # the weights really were bfloat16
        assert acc == acc32, name
    assert runs["bfloat16"][2] == ans32

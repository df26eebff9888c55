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

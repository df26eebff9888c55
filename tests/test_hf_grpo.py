"""The TRL baselines on the wrapper: GRPO with an answer-correctness reward on the state, and PEFT LoRA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("trl")
pytest.importorskip("peft")

from rl_statetune.config import parse_config  # noqa: E402
from rl_statetune.state import TimeState, load_state  # noqa: E402


def test_correctness_reward():
    from rl_statetune.hf.grpo import correctness_reward

    r = correctness_reward("sentence")
    comps = [" 3 + 2 = 5. The answer is 5.\nA: junk", " 3 + 2 = 5. #### 5\n", " The answer is 6.", ""]
    assert r(["p"] * 4, comps, answer=["5", "5", "5", "5"]) == [1.0, 0.0, 0.0, 0.0]
    exact = correctness_reward(None)
    assert exact(["p", "p"], [" yes\nmore", "no"], target=[" yes\n", "yes"]) == [1.0, 0.0]


def test_grpo_logps_equal_our_model_on_prompt_plus_completion():
    """The override that replaces TRL's fused head must give each completion token's log-probability, on TRL's
    layout (left-padded prompt + right-padded completion), from the tuned state."""
    from datasets import Dataset
    from trl import GRPOConfig

    from rl_statetune.hf import RWKV7ForCausalLM, world_tokenizer
    from rl_statetune.hf.grpo import state_grpo_trainer_class

    model = RWKV7ForCausalLM.from_pretrained("embedded")
    state = model.attach_state(TimeState(model.rwkv.config, torch.randn(model.rwkv.config.state_shape()) * 0.5))
    tok = world_tokenizer(padding_side="left")
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, num_generations=2, report_to="none",
                      use_cpu=True, max_completion_length=4, temperature=0.7, beta=0.0, gradient_checkpointing=False)
    trainer = state_grpo_trainer_class()(model=model, reward_funcs=lambda prompts, completions, **_: [0.0] * len(
        prompts), args=args, train_dataset=Dataset.from_list([{"prompt": "Q: a\nA:"}] * 4), processing_class=tok)
    prompts = [tok.world.encode("Q: Tom has 3 apples.\nA:"), tok.world.encode("Q: Mia?\nA:")]
    comps = [[286, 278, 285], [20415, 21800]]
    P, K = max(map(len, prompts)), max(map(len, comps))
    ids = torch.tensor([[0] * (P - len(p)) + p + c + [0] * (K - len(c)) for p, c in zip(prompts, comps)])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (K - len(c))
                         for p, c in zip(prompts, comps)])
    logps, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, K, compute_entropy=True)
    assert logps.shape == (2, K) and ent.shape == (2, K)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        logits, _ = model.rwkv(torch.tensor([p + c]), state.initial_state(model.rwkv, 1))
        ref = (logits[0, len(p) - 1: -1] / 0.7).log_softmax(-1).gather(1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(logps[b, : len(c)], ref, rtol=1e-5, atol=1e-5)


def test_grpo_tune_runs_and_saves_only_the_state(tmp_path):
    from rl_statetune.hf.grpo import grpo_tune

    cfg = parse_config({"model": {"path": "embedded"},
                        "data": {"task": "synthetic", "target_format": "sentence", "train_size": 16, "eval_size": 8},
                        "train": {"steps": 2, "batch_size": 8, "log_every": 1, "eval_max_new_tokens": 12,
                                  "out_dir": str(tmp_path / "run")}})
    res = grpo_tune(cfg, tmp_path / "grpo", generations=4, evaluate=False)
    sf = load_state(tmp_path / "grpo" / "state.safetensors")
    assert sf.metadata["trainer"] == "trl.GRPOTrainer"
    assert res.tuned_parameters == sf.time_state.numel() and sf.time_state.abs().sum() > 0  # it learned
    assert 0.0 <= res.mean_reward_first <= 1.0
    assert not (tmp_path / "grpo" / "model.safetensors").exists()


def test_lora_wraps_only_linear_adapters_and_starts_at_the_frozen_model():
    from rl_statetune.hf import RWKV7ForCausalLM
    from rl_statetune.hf.sft import lora_model

    model = RWKV7ForCausalLM.from_pretrained("embedded")
    idx = torch.tensor([[5, 300, 7, 4000, 12]])
    with torch.no_grad():
        ref = model(idx).logits
    peft_model = lora_model(model, r=4, targets="attention")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".att." in n for n in trainable)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad) == 6 * 4 * 4 * (64 + 64)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=idx).logits, ref)  # B = 0 at init
    with pytest.raises(ValueError):
        lora_model(RWKV7ForCausalLM.from_pretrained("embedded"), r=4, targets="head")

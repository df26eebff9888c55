"""TRL's stock ``SFTTrainer`` and ``GRPOTrainer`` with their default configs (only output_dir, max_steps, batch
size, logging, report_to and use_cpu set; GRPO's completion length cut for time) run on ``RWKV7ForCausalLM``:
gradient checkpointing on (the default), bf16 mixed precision on (the default), the eos text as id 0, and the loss
equal to the project's own on the same batch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from rl_statetune.data import Example, collate  # noqa: E402
from rl_statetune.hf import RWKV7ForCausalLM, world_tokenizer  # noqa: E402
from rl_statetune.state import TimeState  # noqa: E402
from rl_statetune.trainer import target_loss  # noqa: E402

ROWS = [("Q: 1+2=", " 3"), ("Q: 13+4=", " 17"), ("Q: 5+6=", " 11 ok"), ("Q: 7+8=", " 15")]


def tuned(ckpt, seed=0):
    model = RWKV7ForCausalLM.from_pretrained(ckpt)
    g = torch.Generator().manual_seed(seed)
    model.attach_state(TimeState(model.rwkv.config, torch.randn(model.rwkv.config.state_shape(), generator=g)))
    return model


def test_sft_trainer_with_default_config(tiny_world_ckpt, tmp_path):
    from trl import SFTConfig, SFTTrainer

    model = tuned(tiny_world_ckpt)
    start = model.tunable.time_state.detach().clone()
    tok = world_tokenizer()
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=len(ROWS), logging_steps=1,
                     report_to="none", use_cpu=True)
    assert args.gradient_checkpointing and args.bf16  # TRL's defaults, kept
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in ROWS])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    row = trainer.train_dataset[0]
    p, c = tok(ROWS[0][0])["input_ids"], tok(ROWS[0][1])["input_ids"]
    assert row["input_ids"] == p + c + [0]  # TRL appended the eos text: one id 0, not 7 byte tokens
    trainer.train()
    assert model.model.gradient_checkpointing  # the Trainer turned it on and the state still got its gradient
    assert not torch.equal(model.tunable.time_state.detach(), start)
    first = trainer.state.log_history[0]["loss"]
    # ours: the same rows (target = completion + end of text), from the state before the first update
    ours = target_loss(model.rwkv, TimeState(model.rwkv.config, start),
                       collate([Example(p, c + tok.eos_token) for p, c in ROWS], tok, 1024)).item()
    assert first == pytest.approx(ours, rel=2e-3)  # TRL's LM head runs under bf16 autocast


def test_gradient_checkpointing_gives_the_same_gradient(tiny_world_ckpt):
    ids = torch.tensor([[5, 300, 7, 4000, 12, 0], [9, 8, 7, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    grads = []
    for gc in (False, True):
        model = tuned(tiny_world_ckpt).train()
        if gc:
            model.gradient_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads.append(model.tunable.time_state.grad)
    assert model.model.gradient_checkpointing and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)


def test_inputs_embeds_and_hidden_states(tiny_world_ckpt):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    model = tuned(tiny_world_ckpt)
    ids = torch.tensor([[0, 0, 5, 300, 7], [4000, 12, 9, 8, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        emb = model.get_input_embeddings()(ids)
        again = model(inputs_embeds=emb, attention_mask=mask)
    assert isinstance(out, CausalLMOutputWithPast)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(again.cache.state.wkv, out.cache.state.wkv, rtol=0, atol=0)
    hs = out.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1 and all(h.shape == (2, 5, 16) for h in hs)
    torch.testing.assert_close(model.rwkv.head(hs[-1]), out.logits)  # the last one is the normed output
    rwkv = model.rwkv
    with torch.no_grad():  # hidden_states[0]: the embeddings after ln0, at the real positions of the padded row
        torch.testing.assert_close(hs[0][0, 2:], rwkv.blocks[0].ln0(rwkv.emb(ids[0, 2:])))


def test_grpo_trainer_with_default_config(tiny_world_ckpt, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    model = tuned(tiny_world_ckpt, seed=1)
    start = model.tunable.time_state.detach().clone()
    tok = world_tokenizer(padding_side="left")
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, logging_steps=1,
                      report_to="none", use_cpu=True, max_completion_length=6)
    assert args.gradient_checkpointing and args.bf16 and args.num_generations == 8

    def longer_is_better(completions, **_):
        return [float(len(c)) for c in completions]

    data = Dataset.from_list([{"prompt": p} for p, _ in ROWS])
    trainer = GRPOTrainer(model=model, reward_funcs=longer_is_better, args=args, train_dataset=data,
                          processing_class=tok)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["completions/max_length"] <= 6 and log["reward_std"] > 0
    assert not torch.equal(model.tunable.time_state.detach(), start)
    # the per-token log-probabilities the GRPO loss is built from equal our model's, on TRL's padding layout
    model.eval()
    prompts = [tok(ROWS[0][0])["input_ids"], tok(ROWS[1][0])["input_ids"]]
    comps = [[286, 278, 285], [20415, 21800, 0]]
    P, K = max(map(len, prompts)), max(map(len, comps))
    ids = torch.tensor([[0] * (P - len(p)) + p + c for p, c in zip(prompts, comps)])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(c)) for p, c in zip(prompts, comps)])
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, K)
        for b, (p, c) in enumerate(zip(prompts, comps)):
            logits, _ = model.rwkv(torch.tensor([p + c]), model.tunable.initial_state(model.rwkv, 1))
            ref = logits[0, len(p) - 1: -1].log_softmax(-1).gather(1, torch.tensor(c)[:, None])[:, 0]
            torch.testing.assert_close(logps[b], ref, rtol=1e-3, atol=1e-3)  # TRL: chunked, mixed precision

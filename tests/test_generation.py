"""The package's decoder on a real (tiny, random) RWKV-7: batching, tuned states and sampling."""

from __future__ import annotations

import torch
from conftest import TINY_WORLD

from rl_statetune.checkpoint import load_model
from rl_statetune.generation import generate, sample
from rl_statetune.model import RWKV7
from rl_statetune.state import TimeState, initial_state_fn
from rl_statetune.tokenizer import WorldTokenizer

PROMPTS = ["Q: Tom has 3 pens.\nA:", "Hi", "Q: a much longer prompt about apples and books\nA:"]


def test_batching_does_not_change_greedy_outputs(tiny_world_ckpt):
    model, tok = load_model(tiny_world_ckpt), WorldTokenizer()
    together = generate(model, tok, PROMPTS, 6, stop=(), batch_size=3)
    alone = [generate(model, tok, [p], 6, stop=())[0] for p in PROMPTS]
    assert together == alone and all(together)


def test_tuned_state_changes_outputs(tiny_world_ckpt):
    model, tok = load_model(tiny_world_ckpt), WorldTokenizer()
    ts = TimeState(model.config, torch.randn(TINY_WORLD.state_shape(), generator=torch.Generator().manual_seed(0)) * 5)
    base = generate(model, tok, PROMPTS, 6, stop=())
    tuned = generate(model, tok, PROMPTS, 6, stop=(), init_state=initial_state_fn(model, ts))
    assert base != tuned


def test_sampling_is_seeded_and_nucleus_keeps_the_top_token():
    logits = torch.tensor([[5.0, 0.0, -1.0, 0.5]])
    draws = [int(sample(logits, 1.0, 1.0, torch.Generator().manual_seed(s))) for s in range(50)]
    assert draws == [int(sample(logits, 1.0, 1.0, torch.Generator().manual_seed(s))) for s in range(50)]
    assert len(set(draws)) > 1                                    # temperature 1 explores
    assert {int(sample(logits, 1.0, 0.5, torch.Generator().manual_seed(s))) for s in range(50)} == {0}
    assert int(sample(logits, 0.0)) == 0

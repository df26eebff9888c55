"""The package's decoder on a real (tiny, random) RWKV-7: batching, tuned states and sampling."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_WORLD

from rl_statetune.checkpoint import load_model
from rl_statetune.generation import draw, generate, sample
from rl_statetune.lm import NonFiniteLogits, check_finite
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


def test_draws_follow_each_rows_law_and_nucleus_renormalises():
    """The inverse-CDF draw against the exact probabilities: 40,000 draws per row, frequencies within 5 standard
    errors of each entry's probability (zeros never drawn), rows independent, weights need not sum to 1."""
    w = torch.tensor([[0.0, 3.0, 1.0, 0.0, 6.0], [5.0, 0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
    n = 40_000
    ids = draw(w, n, torch.Generator().manual_seed(0))
    assert ids.shape == (3, n)
    freq = torch.stack([torch.bincount(r, minlength=5) for r in ids]).double() / n
    p = w.double() / w.sum(-1, keepdim=True)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)
    # nucleus at top_p 0.7 over probabilities [0.5, 0.3, 0.15, 0.05] keeps the first two, renormalised 5:3
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(8000, 4)
    got = sample(logits, 1.0, 0.7, torch.Generator().manual_seed(1))
    share = torch.bincount(got, minlength=4).double() / len(got)
    assert share[2:].sum() == 0 and abs(share[0] - 5 / 8) < 5 * (15 / 64 / len(got)) ** 0.5
    at_t = sample(torch.tensor([[0.0, 1.0]]).expand(20_000, 2), 0.5, 1.0, torch.Generator().manual_seed(2))
    p1 = float(torch.tensor([0.0, 2.0]).softmax(-1)[1])           # temperature 0.5 doubles the logits
    assert abs(float(at_t.double().mean()) - p1) < 5 * (p1 * (1 - p1) / 20_000) ** 0.5


def test_check_finite_finds_one_bad_entry_and_passes_huge_finite_ones():
    x = torch.zeros(4, 65536)
    check_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[2, 1234] = bad
        with pytest.raises(NonFiniteLogits):
            check_finite(y)
    check_finite(torch.full((4, 16), 3e38))      # the sum overflows; every entry is finite

"""Fresh weights for pretraining must be trainable everywhere (a zero gate times a zero output projection once
left the attention dead through a whole pretraining run)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import TINY

from rl_statetune.init import init_rwkv7


def test_every_parameter_trains_from_the_pretraining_init():
    model = init_rwkv7(TINY, seed=0)  # noise=0: output projections start at zero, as in RWKV-LM
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    idx = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # zero up-projections block gradients for a step or two (RWKV-LM does the same); no longer
        opt.zero_grad()
        logits, _ = model(idx)
        F.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), idx[:, 1:].reshape(-1)).backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert dead == []

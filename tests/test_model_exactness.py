"""Our RWKV-7 against the official `rwkv` pip package (RWKV_V7_ON=1, strategy "cpu fp32") on the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import write_checkpoint

from rl_statetune.checkpoint import load_model
from rl_statetune.model import RWKV7, RWKV7Config

SIZES = [
    # (vocab, C, L, head, w, a, v, g, ffn)
    RWKV7Config(97, 64, 3, 16, 8, 8, 4, 16, 256),
    RWKV7Config(256, 128, 2, 64, 16, 16, 8, 32, 512),
    RWKV7Config(50, 96, 1, 32, 8, 8, 8, 16, 384),
]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cfg", SIZES, ids=lambda c: f"L{c.n_layer}-C{c.n_embd}-N{c.head_size}")
@pytest.mark.parametrize("layer0_v", [True, False], ids=["with-l0v", "without-l0v"])
def test_matches_rwkv_package(tmp_path, cfg, layer0_v):
    from rwkv.model import RWKV

    path = write_checkpoint(tmp_path / "m.pth", cfg, seed=cfg.n_embd + layer0_v, layer0_v=layer0_v)
    ref = RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32")
    ours = load_model(path)
    g = torch.Generator().manual_seed(cfg.n_embd)
    toks = torch.randint(0, cfg.vocab_size, (23,), generator=g).tolist()
    more = torch.randint(0, cfg.vocab_size, (9,), generator=g).tolist()

    ref_logits, ref_state = ref.forward(toks, None, full_output=True)
    logits, state = ours(torch.tensor([toks]))
    assert rel(logits[0], ref_logits) < 1e-4

    # continuing from the carried state
    ref_logits2, ref_state = ref.forward(more, ref_state, full_output=True)
    logits2, state = ours(torch.tensor([more]), state)
    assert rel(logits2[0], ref_logits2) < 1e-4
    for i in range(cfg.n_layer):
        assert rel(state.att_x[i, 0], ref_state[3 * i]) < 1e-4
        assert rel(state.wkv[i, 0], ref_state[3 * i + 1]) < 1e-4
        assert rel(state.ffn_x[i, 0], ref_state[3 * i + 2]) < 1e-4


def test_parallel_equals_recurrent(tiny_ckpt):
    model = load_model(tiny_ckpt)
    idx = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    full, s_full = model(idx)
    s, steps = None, []
    for t in range(idx.shape[1]):
        out, s = model(idx[:, t: t + 1], s)
        steps.append(out[:, 0])
    assert rel(torch.stack(steps, 1), full) < 1e-5
    assert rel(s.wkv, s_full.wkv) < 1e-5


def test_right_padding_matches_unpadded(tiny_ckpt):
    model = load_model(tiny_ckpt)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(1, 128, (1, 11), generator=g)
    b = torch.randint(1, 128, (1, 6), generator=g)
    batch = torch.zeros(2, 11, dtype=torch.long)
    batch[0], batch[1, :6] = a[0], b[0]
    logits, state = model(batch, lengths=torch.tensor([11, 6]))
    la, sa = model(a)
    lb, sb = model(b)
    assert rel(logits[1, :6], lb[0]) < 1e-5
    for part in ("att_x", "wkv", "ffn_x"):
        assert rel(getattr(state, part)[:, 1], getattr(sb, part)[:, 0]) < 1e-5
        assert rel(getattr(state, part)[:, 0], getattr(sa, part)[:, 0]) < 1e-5


def test_weights_are_frozen(tiny_ckpt):
    model = load_model(tiny_ckpt)
    assert not any(p.requires_grad for p in model.parameters())


def test_bad_inputs_fail_clearly(tiny_ckpt):
    model = load_model(tiny_ckpt)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.zeros(5, dtype=torch.long))
    _, state = model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size 2"):
        model(torch.zeros(3, 1, dtype=torch.long), state)

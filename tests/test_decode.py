"""The dedicated one-token step (``RWKV7.decode``, rl_statetune/decode.py) against ``forward`` on one token and
against the official `rwkv` package, for float32 and half-precision weights."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, write_checkpoint

from rl_statetune.checkpoint import load_model
from rl_statetune.model import RWKV7Config
from rl_statetune.state import TimeState


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tuned(cfg, seed=0, scale=0.3):
    return TimeState(cfg, scale * torch.randn(cfg.state_shape(), generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("dec") / "m.pth", TINY, seed=11)


@torch.no_grad()
def test_decode_equals_forward_and_leaves_the_input_state_alone(ckpt):
    model = load_model(ckpt)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, TINY.vocab_size, (3, 9), generator=g)
    _, state = model(idx, tuned(TINY).initial_state(model, 3))   # wkv broadcast from one tuned state, then real
    before = [t.clone() for t in (state.att_x, state.wkv, state.ffn_x)]
    for _ in range(4):
        tok = torch.randint(0, TINY.vocab_size, (3,), generator=g)
        want, want_state = model(tok[:, None], state)
        got, got_state = model.decode(tok, state)
        assert got.dtype == torch.float32 and got.shape == (3, TINY.vocab_size)
        assert rel(got, want[:, 0]) < 1e-5
        for a, b in ((got_state.att_x, want_state.att_x), (got_state.wkv, want_state.wkv),
                     (got_state.ffn_x, want_state.ffn_x)):
            assert rel(a, b) < 1e-5
        for t, b in zip((state.att_x, state.wkv, state.ffn_x), before):
            assert torch.equal(t, b)
        state, before = got_state, [t.clone() for t in (got_state.att_x, got_state.wkv, got_state.ffn_x)]


@torch.no_grad()
def test_decode_from_the_zero_state_and_a_tuned_broadcast_state(ckpt):
    model = load_model(ckpt)
    tok = torch.tensor([3, 5])
    assert rel(model.decode(tok)[0], model(tok[:, None])[0][:, 0]) < 1e-5
    s = tuned(TINY, seed=2).initial_state(model, 2)
    assert rel(model.decode(tok, s)[0], model(tok[:, None], s)[0][:, 0]) < 1e-5


@pytest.mark.parametrize("cfg", [RWKV7Config(97, 64, 3, 16, 8, 8, 4, 16, 256),
                                 RWKV7Config(256, 128, 2, 64, 16, 16, 8, 32, 512)],
                         ids=lambda c: f"L{c.n_layer}-C{c.n_embd}-N{c.head_size}")
def test_decode_matches_rwkv_package_token_by_token(tmp_path, cfg):
    from rwkv.model import RWKV

    path = write_checkpoint(tmp_path / "m.pth", cfg, seed=cfg.n_embd)
    ref = RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32")
    ours = load_model(path)
    toks = torch.randint(0, cfg.vocab_size, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    ref_state, state = None, None
    with torch.no_grad():
        for t in toks:
            ref_logits, ref_state = ref.forward([t], ref_state)
            logits, state = ours.decode(torch.tensor([t]), state)
            assert rel(logits[0], ref_logits) < 1e-4
    for i in range(cfg.n_layer):
        assert rel(state.wkv[i, 0], ref_state[3 * i + 1]) < 1e-4


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.05), ("float16", 0.006)])  # random tokens: 0.029, 0.003
@torch.no_grad()
def test_half_weights_decode_close_to_float32(dtype, tol):
    m32, m = load_model("embedded:reason"), load_model("embedded:reason", dtype=dtype)
    idx = torch.randint(0, 65536, (2, 12), generator=torch.Generator().manual_seed(0))
    ts = tuned(m.config, scale=0.2)
    _, s32 = m32(idx, ts.initial_state(m32, 2))
    _, s = m(idx, ts.initial_state(m, 2))
    tok = torch.tensor([100, 2000])
    for _ in range(3):
        want, s32 = m32.decode(tok, s32)
        got, s = m.decode(tok, s)
        assert s.wkv.dtype == torch.float32 and s.att_x.dtype == getattr(torch, dtype)
        assert rel(got, want) < tol
        tok = want.argmax(-1)


def test_decode_falls_back_to_forward_for_upscaled_states_and_gradients(ckpt):
    from rl_statetune.upscale import build_upscaled_state

    model = load_model(ckpt)
    up = build_upscaled_state(model, "rbf", 24, support="random", seed=0)
    with torch.no_grad():
        up.lifted_state.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    tok = torch.tensor([7])
    got, s = model.decode(tok, up.initial_state(model, 1))
    want, _ = model(tok[:, None], up.initial_state(model, 1))
    assert s.lifted is not None and rel(got, want[:, 0]) < 1e-6
    ts = tuned(TINY)
    logits, _ = model.decode(tok, ts.initial_state(model, 1))
    logits.logsumexp(-1).sum().backward()
    assert ts.time_state.grad is not None and ts.time_state.grad.abs().sum() > 0


def test_decode_rejects_bad_shapes(ckpt):
    model = load_model(ckpt)
    with pytest.raises(ValueError, match="one token per row"):
        model.decode(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="batch size"):
        model.decode(torch.tensor([1, 2]), model.zero_state(3))


@torch.no_grad()
def test_decode_dtype_copies_follow_the_weights(ckpt):
    """A bfloat16 model decoding with float16 copies of its matrices: close to float32, and the copies are rebuilt
    when the weights change."""
    m32, m = load_model(ckpt), load_model(ckpt, dtype="bfloat16")
    m.decode_dtype = torch.float16
    tok = torch.tensor([3, 9])
    want, _ = m32.decode(tok)
    got, _ = m.decode(tok)
    assert rel(got, want) < 0.01
    m.head.weight.mul_(2)           # in place: the cached float16 head must follow
    m32.head.weight.mul_(2)
    assert rel(m.decode(tok)[0], m32.decode(tok)[0]) < 0.01


@torch.no_grad()
def test_decode_transposed_copies_give_the_same_step(ckpt):
    """decode_transposed: the float32 step through [in, out] copies of the head and FFN key equals the plain step
    (to float rounding: a different summation order), over several steps of two rows, and follows weight changes."""
    m = load_model(ckpt)
    tok = torch.tensor([3, 9])
    want, sw = m.decode(tok, tuned(m.config).initial_state(m, 2))
    m.decode_transposed = True
    got, sg = m.decode(tok, tuned(m.config).initial_state(m, 2))
    assert "head_t" in m._decode_matrices[1][-1] and "fk_t" in m._decode_matrices[1][0]
    for _ in range(3):
        assert rel(got, want) < 1e-6 and rel(sg.wkv, sw.wkv) < 1e-6
        m.decode_transposed = False
        want, sw = m.decode(want.argmax(-1), sw)
        m.decode_transposed = True
        got, sg = m.decode(got.argmax(-1), sg)
    m.head.weight.mul_(2)           # in place: the cached transposed head must follow
    m.decode_transposed = False
    want, _ = m.decode(tok)
    m.decode_transposed = True
    assert rel(m.decode(tok)[0], want) < 1e-6

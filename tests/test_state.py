"""The tunable initial state: identity at zero, gradients only to it, exact gradients, and its files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from rl_statetune.checkpoint import load_model
from rl_statetune.model import RWKV7
from rl_statetune.state import StateShapeError, TimeState, load_state, save_state
from rl_statetune.upscale import tunable_from_file


def test_zero_state_is_the_frozen_model(tiny_ckpt):
    model = load_model(tiny_ckpt)
    ts = TimeState(model.config)
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    torch.testing.assert_close(model(idx, ts.initial_state(model, 3))[0], model(idx)[0], rtol=0, atol=0)


def test_gradient_reaches_only_the_state(tiny_ckpt):
    model = load_model(tiny_ckpt)
    ts = TimeState(model.config)
    idx = torch.randint(0, TINY.vocab_size, (2, 8))
    logits, _ = model(idx, ts.initial_state(model, 2))
    F.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), idx[:, 1:].reshape(-1)).backward()
    assert all(p.grad is None for p in model.parameters())
    assert ts.time_state.grad is not None and ts.time_state.grad.abs().sum() > 0


def test_state_gradient_matches_finite_differences(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.float64)
    idx = torch.randint(0, TINY.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    s0 = (0.1 * torch.randn(TINY.state_shape(), dtype=torch.float64,
                            generator=torch.Generator().manual_seed(3))).requires_grad_()

    def loss(s):
        st = model.zero_state(2)
        st = type(st)(st.att_x, s[:, None].expand(-1, 2, -1, -1, -1), st.ffn_x)
        logits, _ = model(idx, st)
        return F.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), idx[:, 1:].reshape(-1))

    (grad,) = torch.autograd.grad(loss(s0), s0)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):  # directional derivatives along random directions
        d = torch.randn(s0.shape, generator=g, dtype=torch.float64)
        eps = 1e-5
        fd = (loss(s0.detach() + eps * d) - loss(s0.detach() - eps * d)) / (2 * eps)
        assert abs(fd.item() - (grad * d).sum().item()) < 1e-8 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_roundtrip(tmp_path, suffix):
    t = torch.randn(TINY.state_shape())
    path = save_state(tmp_path / f"s{suffix}", t, metadata={"base_model_sha256_16": "abc", "steps": 3},
                      extras={"upscale.gamma": torch.tensor([0.5])})
    sf = load_state(path)
    torch.testing.assert_close(sf.time_state, t, rtol=0, atol=0)
    torch.testing.assert_close(sf.extras["upscale.gamma"], torch.tensor([0.5]))
    if suffix == ".safetensors":
        assert sf.metadata == {"base_model_sha256_16": "abc", "steps": 3}
    if suffix == ".pth":  # the plain RWKV-PEFT / RWKV-Runner layout
        raw = torch.load(path, weights_only=True)
        assert raw["blocks.1.att.time_state"].shape == (TINY.n_head, TINY.head_size, TINY.head_size)


def test_state_for_another_model_size_fails_clearly(tmp_path):
    save_state(tmp_path / "s.pth", torch.zeros(3, 2, 16, 16))
    with pytest.raises(StateShapeError, match="3 layers x 2 heads x head size 16.*2 layers"):
        tunable_from_file(load_state(tmp_path / "s.pth"), TINY)
    torch.save({"emb.weight": torch.zeros(2, 2)}, tmp_path / "not_state.pth")
    with pytest.raises(StateShapeError, match="no 'blocks.N.att.time_state'"):
        load_state(tmp_path / "not_state.pth")
    with pytest.raises(ValueError, match="must end in"):
        save_state(tmp_path / "s.bin", torch.zeros(1, 1, 2, 2))


def test_tuned_state_loads_into_the_rwkv_package(tiny_ckpt, tmp_path):
    """The saved file, used as the rwkv package's initial state[3i+1], gives our tuned model's logits."""
    from rwkv.model import RWKV

    model = load_model(tiny_ckpt)
    ts = TimeState(model.config, torch.randn(TINY.state_shape()) * 0.3)
    path = save_state(tmp_path / "tuned.pth", ts.time_state)
    ref = RWKV(model=str(tiny_ckpt)[: -len(".pth")], strategy="cpu fp32")
    state = ref.generate_zero_state()
    for key, t in torch.load(path, weights_only=True).items():
        state[3 * int(key.split(".")[1]) + 1] = t.clone()
    toks = torch.randint(0, TINY.vocab_size, (12,)).tolist()
    ref_logits, _ = ref.forward(toks, state, full_output=True)
    ours, _ = model(torch.tensor([toks]), ts.initial_state(model, 1))
    assert ((ours[0] - ref_logits).norm() / ref_logits.norm()).item() < 1e-4
    assert ((ours[0] - model(torch.tensor([toks]))[0][0]).norm() > 1e-2)  # the state really changes outputs

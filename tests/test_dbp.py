"""Decorrelated backpropagation: the update rule, its loss, and decorrelation of strongly correlated inputs."""

from __future__ import annotations

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.dbp import Decorrelation, dbp_update_, decorrelation_loss, decorrelation_stats, subsample_rows
from rl_statetune.upscale import UpscaledState, dbp_step


def correlated(n, H, M, seed=0):
    """Samples whose features share a strong common factor (pairwise correlation ~0.8) and unequal scales."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, H, 1, generator=g)
    x = 2.0 * common + torch.randn(n, H, M, generator=g)
    return x * torch.linspace(0.5, 1.5, M) / 2.2


def offdiag_corr(z):
    """Largest |off-diagonal correlation coefficient| per head, averaged over heads."""
    c = torch.einsum("nhi,nhj->hij", z, z) / z.shape[0]
    d = torch.diagonal(c, dim1=-2, dim2=-1).sqrt()
    rho = c / (d[..., :, None] * d[..., None, :])
    return (rho - torch.diag_embed(torch.diagonal(rho, dim1=-2, dim2=-1))).abs().mean(dim=(-1, -2)).mean().item()


def test_stats_and_loss_match_their_definitions():
    z = torch.randn(50, 2, 4, dtype=torch.float64)
    C, v = decorrelation_stats(z)
    full = (z.transpose(0, 1).transpose(1, 2) @ z.transpose(0, 1)) / 50      # [H, M, M]
    torch.testing.assert_close(C + torch.diag_embed(v + 1), full)
    assert bool((torch.diagonal(C, dim1=-2, dim2=-1) == 0).all())
    kappa = 0.3
    want = sum(((1 - kappa) * C[h].square().sum() + kappa * v[h].square().sum()) / 16 for h in range(2))
    assert decorrelation_loss(z, kappa).item() == pytest.approx(want.item(), rel=1e-12)


def test_update_is_the_reference_rule():
    g = torch.Generator().manual_seed(1)
    R = torch.eye(3, dtype=torch.float64)[None] + 0.1 * torch.randn(1, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(20, 1, 3, generator=g, dtype=torch.float64)
    z = x[:, 0] @ R[0].T
    C = z.T @ z / 20
    v = torch.diagonal(C) - 1
    C = C - torch.diag(torch.diagonal(C))
    eta, kappa = 0.05, 0.2
    want = R[0] - eta * ((1 - kappa) * C @ R[0] + kappa * torch.diag(v) @ R[0])
    before = R.clone()
    loss = dbp_update_(R, x, eta, kappa)
    torch.testing.assert_close(R[0], want)
    assert loss == pytest.approx(decorrelation_loss(torch.einsum("hij,nhj->nhi", before, x), kappa).item())


def test_dbp_decorrelates_correlated_features_tenfold_within_a_few_hundred_updates():
    H, M = 2, 16
    dec = Decorrelation(H, M)
    x = correlated(4000, H, M)
    before = offdiag_corr(dec(x).detach())
    losses = []
    for step in range(300):
        batch = x[(step * 400) % 4000:][:400]                         # mini-batches, like training steps
        losses.append(dbp_update_(dec.R.data, batch, eta=0.05, kappa=0.01))
    after = offdiag_corr(dec(correlated(4000, H, M, seed=1)).detach())  # fresh samples from the same source
    assert before > 0.5, before
    assert after < before / 10, (before, after)
    assert losses[-1] < losses[0] / 10


def test_identity_at_init_and_subsample():
    dec = Decorrelation(3, 5)
    x = torch.randn(7, 3, 5)
    torch.testing.assert_close(dec(x), x, rtol=0, atol=0)
    rows = torch.arange(100)[:, None]
    assert subsample_rows(rows, 0.1).flatten().tolist() == list(range(0, 100, 10))
    assert subsample_rows(rows[:5], 0.1).shape[0] == 5       # fewer rows than the stride: keep them all


def test_dbp_step_uses_the_features_recorded_during_training(tiny_ckpt):
    from rl_statetune.model import RWKV7
    from rl_statetune.upscale import build_upscaled_state

    model = load_model(tiny_ckpt)
    up = build_upscaled_state(model, "rbf", 12, support="random")
    assert isinstance(up, UpscaledState)
    up.set_recording(0.5)
    idx = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(idx, up.initial_state(model, 2))
    assert all(not l.recorded for l in up.lifts)          # no recording outside training (no grad)
    model(idx, up.initial_state(model, 2), lengths=torch.tensor([10, 6]))
    assert up.lifts[0].recorded[0].shape == (8, 2, 12)    # 16 real tokens, every second kept
    R0 = up.lifts[0].decor.R.detach().clone()
    loss = dbp_step(up, eta=1e-2, kappa=1e-2)
    assert loss is not None and loss > 0
    assert not torch.equal(up.lifts[0].decor.R, R0)
    assert all(not l.recorded for l in up.lifts)
    assert dbp_step(up, 1e-2, 1e-2) is None

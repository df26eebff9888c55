"""Feature maps: each matches its defining formula / kernel, channel weights are distributions, gamma heuristic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rl_statetune.features import (RBFFeatures, TaylorFeatures, PerformerFeatures, make_feature_map,
                                   median_gamma, orthogonal_gaussian, taylor_dim)

G = torch.Generator().manual_seed(0)


def unit(*shape):
    return F.normalize(torch.randn(*shape, generator=G, dtype=torch.float64), dim=-1)


def test_rbf_is_the_gaussian_kernel_to_each_support_vector():
    c, x = unit(2, 5, 4), unit(7, 2, 4)
    gamma = torch.tensor([0.7, 1.9], dtype=torch.float64)
    phi = RBFFeatures(c, gamma)(x)
    ref = torch.stack([torch.stack([torch.exp(-gamma[h] * (x[n, h] - c[h, j]).square().sum())
                                    for j in range(5)]) for n in range(7) for h in range(2)]).view(7, 2, 5)
    torch.testing.assert_close(phi, ref, rtol=1e-12, atol=0)


def test_taylor_inner_product_is_second_order_exp():
    proj = torch.eye(4, dtype=torch.float64)[None]                 # d = N: no projection loss
    q, k = unit(6, 1, 4), unit(6, 1, 4)
    f = TaylorFeatures(proj, torch.ones(1))
    assert f.dim == 1 + 4 + 16
    dot = (q * k).sum(-1)
    torch.testing.assert_close((f(q) * f(k)).sum(-1), 1 + dot + dot.square() / 2, rtol=1e-12, atol=1e-12)


def test_performer_features_are_positive_and_unbiased_for_the_softmax_kernel():
    N, M, gamma = 4, 8192, 0.1
    W = orthogonal_gaussian(1, M, N, torch.Generator().manual_seed(1)).double()
    f = PerformerFeatures(W, torch.tensor([gamma], dtype=torch.float64))
    q, k = unit(8, 1, N), unit(8, 1, N)
    est = (f(q) * f(k)).sum(-1)
    exact = torch.exp(2 * gamma * (q * k).sum(-1))                 # exp(s^2 q.k), s^2 = 2 gamma
    assert bool((f(q) > 0).all())
    assert (est / exact - 1).abs().max() < 0.05     # Monte Carlo: relative std ~ sqrt((e^{4 s^2} - 1) / M) = 1.2%


def test_orthogonal_gaussian_blocks_are_orthogonal():
    W = orthogonal_gaussian(2, 10, 4, torch.Generator().manual_seed(0))
    block = F.normalize(W[0, :4].double(), dim=-1)
    torch.testing.assert_close(block @ block.T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,P", [("rbf", 6), ("taylor", 3), ("performer", 6)])
def test_channel_weights_are_distributions(kind, P):
    f = make_feature_map(kind, torch.randn(2, P, 5, generator=G), torch.ones(2))
    w = f.channel_weights()
    assert w.shape == (2, f.dim, 5) and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(2, f.dim))


def test_taylor_dim_is_the_largest_fitting_projection():
    assert [taylor_dim(m) for m in (1, 3, 7, 13, 20, 21, 64, 128, 256)] == [1, 1, 2, 3, 3, 4, 7, 10, 15]
    for m in range(3, 300):
        d = taylor_dim(m)
        assert 1 + d + d * d <= m < 1 + (d + 1) + (d + 1) ** 2


def test_median_gamma_and_input_checks():
    x, c = unit(50, 1, 3), unit(1, 4, 3)
    d2 = (x[:, 0, None] - c[0][None]).square().sum(-1).flatten()
    assert median_gamma(x, c).item() == pytest.approx(1 / d2.median().item())
    f = RBFFeatures(c.float(), torch.ones(1))
    with pytest.raises(ValueError, match="input must be"):
        f(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="gamma must be positive"):
        RBFFeatures(c.float(), torch.zeros(1))
    with pytest.raises(ValueError, match="unknown feature map"):
        make_feature_map("cosine", c, torch.ones(1))
    assert math.isclose(float(f(c[:, :1].float().transpose(0, 1))[0, 0, 0]), 1.0, rel_tol=1e-6)

"""Advantages and the REINFORCE surrogate on hand-made rewards and a toy softmax policy."""

from __future__ import annotations

import pytest
import torch

from rl_statetune.rl.policy_gradient import EmaBaseline, advantages, l2_penalty, pg_loss, weigh_negatives


def test_group_advantages_are_per_context_and_normalised():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = advantages(r, mode="group", normalize_std=False)
    assert torch.equal(a, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))
    a = advantages(r, mode="group", normalize_std=True)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, 0.57735
    torch.testing.assert_close(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.all(a[1] == 0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        advantages(r[:, :1], mode="group")


def test_batch_and_ema_baselines():
    r = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert torch.equal(advantages(r, mode="batch", normalize_std=False), r - 4.0)
    b = EmaBaseline(decay=0.5)
    # the first batch is its own baseline; the next uses the running mean 0.5*4 + 0.5*8 = 6 ... before folding
    assert torch.equal(advantages(r, mode="ema", normalize_std=False, baseline=b), r - 4.0)
    assert torch.equal(advantages(r + 4, mode="ema", normalize_std=False, baseline=b), r + 4 - 4.0)
    assert b.value == 6.0
    valid = torch.tensor([[True, False], [True, True]])
    a = advantages(r, valid, mode="batch", normalize_std=False)
    assert a[0, 1] == 0 and torch.allclose(a[valid], r[valid] - 13.0 / 3)


def test_pg_step_increases_expected_reward_on_a_toy_policy():
    """pi = softmax(theta) over 5 actions with fixed rewards; the estimator tracks the exact gradient."""
    reward = torch.tensor([0.0, 1.0, 0.2, 0.0, 0.5])
    theta = torch.zeros(1, 5, requires_grad=True)
    gen = torch.Generator().manual_seed(0)

    def expected(t):
        return float((t.softmax(-1) * reward).sum())

    exact = torch.autograd.grad((theta.softmax(-1) * reward).sum(), theta)[0]
    logp = theta.log_softmax(-1)
    actions = torch.multinomial(logp.detach().exp(), 4096, replacement=True, generator=gen)
    adv = advantages(reward[actions], mode="group", normalize_std=False)
    loss = pg_loss(logp.gather(1, actions), adv)
    (est,) = torch.autograd.grad(loss, theta)
    cos = torch.nn.functional.cosine_similarity(-est.flatten(), exact.flatten(), dim=0)
    assert cos > 0.95
    before = expected(theta)
    with torch.no_grad():
        theta -= 2.0 * est
    assert expected(theta) > before + 0.05


def test_pg_loss_masks_and_l2_penalty():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 3.0]])
    assert float(pg_loss(lp, adv, torch.tensor([[True, False]]))) == 1.0
    s = torch.full((2, 3), 2.0)
    assert float(l2_penalty(s, 0.5)) == 2.0 and float(l2_penalty(s, 0.0)) == 0.0


def test_negative_advantages_are_weighed():
    a = torch.tensor([[1.5, -0.5, 0.0], [-2.0, 1.0, 1.0]])
    torch.testing.assert_close(weigh_negatives(a, 0.0), torch.tensor([[1.5, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    torch.testing.assert_close(weigh_negatives(a, 0.25), torch.tensor([[1.5, -0.125, 0.0], [-0.5, 1.0, 1.0]]))
    assert weigh_negatives(a, 1.0) is a

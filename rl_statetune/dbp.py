"""Decorrelated backpropagation (DBP) for the kernel features: a learnable R, z = R x, kept decorrelated.

After every optimiser step, outside autograd, on a subsample of the step's feature vectors x (per head):

    z = R x ,   C = E[z z^T] - diag(E[z z^T]) ,   v = E[z^2] - 1
    R <- R - eta ((1 - kappa) C R + kappa diag(v) R)
    L_decor = ((1 - kappa) sum C^2 + kappa sum v^2) / M^2

(the decorrelation rule of Dalm et al. 2024). The first term pushes the off-diagonal covariance of z to zero,
the second (weighted by kappa) pushes each feature's second moment towards one.
"""

from __future__ import annotations

import torch
from torch import nn


class Decorrelation(nn.Module):
    """z = R x per head, R [H, M, M] initialised to the identity (so it changes nothing at the start)."""

    def __init__(self, n_head: int, dim: int):
        super().__init__()
        self.R = nn.Parameter(torch.eye(dim).repeat(n_head, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., H, M] -> z [..., H, M]."""
        return torch.einsum("hij,...hj->...hi", self.R.to(x.dtype), x)


def second_moment_sum(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_n z_n z_n^T per head, z = R x: [H, M, M] from R [H, M, M] and inputs x [n, H, M]."""
    z = torch.einsum("hij,nhj->nhi", R, x.to(R.dtype))
    return torch.einsum("nhi,nhj->hij", z, z)


def stats_from_second_moment(second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[z z^T] [H, M, M] -> (C = its off-diagonal part [H, M, M], v = E[z^2] - 1 [H, M])."""
    diag = torch.diagonal(second, dim1=-2, dim2=-1)
    return second - torch.diag_embed(diag), diag - 1.0


def loss_from_stats(C: torch.Tensor, v: torch.Tensor, kappa: float) -> torch.Tensor:
    """L_decor = ((1 - kappa) sum C^2 + kappa sum v^2) / M^2, summed over heads."""
    M = v.shape[-1]
    return (((1 - kappa) * C.square().sum((-1, -2)) + kappa * v.square().sum(-1)) / M**2).sum()


def decorrelation_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z [n, H, M] -> (C [H, M, M] off-diagonal second moments, v [H, M] = E[z^2] - 1)."""
    if z.dim() != 3 or z.shape[0] == 0:
        raise ValueError(f"decorrelation needs samples z [n>0, H, M], got shape {tuple(z.shape)}")
    return stats_from_second_moment(torch.einsum("nhi,nhj->hij", z, z) / z.shape[0])


def decorrelation_loss(z: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-head L_decor summed over heads (a scalar)."""
    return loss_from_stats(*decorrelation_stats(z), kappa)


@torch.no_grad()
def dbp_update_from_moment_(R: torch.Tensor, second: torch.Tensor, eta: float, kappa: float) -> float:
    """The DBP step on R [H, M, M] from E[z z^T] (local, or averaged over learners); returns L_decor before it."""
    C, v = stats_from_second_moment(second)
    loss = loss_from_stats(C, v, kappa)
    R.sub_(eta * ((1 - kappa) * C @ R + kappa * v[..., None] * R))
    return float(loss)


@torch.no_grad()
def dbp_update_(R: torch.Tensor, x: torch.Tensor, eta: float, kappa: float) -> float:
    """One in-place DBP step on R [H, M, M] from inputs x [n, H, M]; returns L_decor before the step."""
    if x.dim() != 3 or x.shape[0] == 0:
        raise ValueError(f"decorrelation needs samples x [n>0, H, M], got shape {tuple(x.shape)}")
    return dbp_update_from_moment_(R, second_moment_sum(R, x) / x.shape[0], eta, kappa)


def subsample_rows(x: torch.Tensor, fraction: float, offset: int = 0) -> torch.Tensor:
    """Every round(1/fraction)-th row starting at ``offset`` mod stride: deterministic, no RNG (so resumed
    runs repeat exactly)."""
    stride = max(1, round(1.0 / fraction))
    return x[offset % stride:: stride] if x.shape[0] > stride else x


__all__ = ["Decorrelation", "decorrelation_stats", "decorrelation_loss", "dbp_update_", "dbp_update_from_moment_",
           "second_moment_sum", "subsample_rows"]

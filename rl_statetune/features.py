"""Feature maps that lift per-head key/query directions from N to M dimensions (kernel upscaling).

Every map acts per head on unit vectors x in R^N (inputs [..., H, N] -> features [..., H, M]) and is defined by
a fixed ``basis`` buffer [H, P, N] plus a scale ``gamma`` [H]:

* ``rbf``       Gaussian kernel on M support vectors c_j:  phi_j(x) = exp(-gamma ||x - c_j||^2),  P = M.
* ``taylor``    BASED's second-order Taylor map of exp(q.k) on a projection x' = B x to d dims:
                phi(x) = [1, x', vec(x' x'^T) / sqrt 2],  so phi(q).phi(k) = 1 + q'.k' + (q'.k')^2 / 2;
                M = 1 + d + d^2, P = d.
* ``performer`` FAVOR+ positive random features of the softmax kernel exp(s^2 q.k), s^2 = 2 gamma:
                phi(x) = exp(s W x - s^2 ||x||^2 / 2) / sqrt(M),  W = basis (orthogonal Gaussian rows),  P = M.

Each map also gives ``channel_weights`` [H, M, N] (rows sum to 1): how much each feature "lives on" each
channel, used to lift the per-channel decays to per-feature decays (``rl_statetune.upscale``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

FEATURE_MAPS = ("rbf", "taylor", "performer")


class FeatureMap(nn.Module):
    """Base class: fixed buffers ``basis`` [H, P, N] and ``gamma`` [H]; no trainable parameters."""

    kind: str = ""

    def __init__(self, basis: torch.Tensor, gamma: torch.Tensor):
        super().__init__()
        if basis.dim() != 3:
            raise ValueError(f"{self.kind}: basis must be [H, P, N], got shape {tuple(basis.shape)}")
        if gamma.shape != basis.shape[:1]:
            raise ValueError(f"{self.kind}: gamma must be [H] = [{basis.shape[0]}], got {tuple(gamma.shape)}")
        if not bool((gamma > 0).all()):
            raise ValueError(f"{self.kind}: gamma must be positive, got {gamma.tolist()}")
        self.register_buffer("basis", basis.detach().clone())
        self.register_buffer("gamma", gamma.detach().clone())

    @property
    def n_head(self) -> int:
        return self.basis.shape[0]

    @property
    def in_dim(self) -> int:
        return self.basis.shape[2]

    @property
    def dim(self) -> int:
        """M, the number of features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def channel_weights(self) -> torch.Tensor:
        """[H, M, N], non-negative, rows summing to one."""
        raise NotImplementedError

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-2:] != (self.n_head, self.in_dim):
            raise ValueError(f"{self.kind}: input must be [..., H={self.n_head}, N={self.in_dim}], "
                             f"got {tuple(x.shape)}")


def _row_distribution(v: torch.Tensor) -> torch.Tensor:
    """Squared entries normalised per row: where a direction's mass lies among the N channels."""
    sq = v.square()
    return sq / sq.sum(-1, keepdim=True).clamp_min(1e-30)


class RBFFeatures(FeatureMap):
    kind = "rbf"

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def forward(self, x):
        self._check(x)
        c = self.basis.to(x.dtype)
        # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c, clamped at 0 against rounding
        d2 = (x.square().sum(-1, keepdim=True) + c.square().sum(-1) - 2 * torch.einsum("...hn,hmn->...hm", x, c))
        return torch.exp(-self.gamma.to(x.dtype)[:, None] * d2.clamp_min(0))

    def channel_weights(self):
        return _row_distribution(self.basis)


class TaylorFeatures(FeatureMap):
    kind = "taylor"

    @property
    def dim(self) -> int:
        d = self.basis.shape[1]
        return 1 + d + d * d

    def forward(self, x):
        self._check(x)
        xp = torch.einsum("...hn,hdn->...hd", x, self.basis.to(x.dtype))
        quad = (xp[..., :, None] * xp[..., None, :]).flatten(-2) / math.sqrt(2.0)
        return torch.cat([torch.ones_like(xp[..., :1]), xp, quad], dim=-1)

    def channel_weights(self):
        H, d, N = self.basis.shape
        lin = _row_distribution(self.basis)                              # [H, d, N]
        quad = 0.5 * (lin[:, :, None] + lin[:, None, :]).reshape(H, d * d, N)
        const = torch.full((H, 1, N), 1.0 / N, dtype=lin.dtype, device=lin.device)
        return torch.cat([const, lin, quad], dim=1)


class PerformerFeatures(FeatureMap):
    kind = "performer"

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def forward(self, x):
        self._check(x)
        s = (2 * self.gamma.to(x.dtype)).sqrt()[:, None]                  # [H, 1]
        proj = torch.einsum("...hn,hmn->...hm", x, self.basis.to(x.dtype))
        return torch.exp(s * proj - 0.5 * s.square() * x.square().sum(-1, keepdim=True)) / math.sqrt(self.dim)

    def channel_weights(self):
        return _row_distribution(self.basis)


_CLASSES: dict[str, type[FeatureMap]] = {"rbf": RBFFeatures, "taylor": TaylorFeatures, "performer": PerformerFeatures}


def make_feature_map(kind: str, basis: torch.Tensor, gamma: torch.Tensor) -> FeatureMap:
    if kind not in _CLASSES:
        raise ValueError(f"unknown feature map {kind!r}; choose one of {', '.join(FEATURE_MAPS)}")
    return _CLASSES[kind](basis, gamma)


def taylor_dim(features: int) -> int:
    """The largest projection size d with 1 + d + d^2 <= features (at least 1)."""
    d = max(1, int((math.sqrt(4 * features - 3) - 1) / 2))
    while 1 + (d + 1) + (d + 1) ** 2 <= features:
        d += 1
    while d > 1 and 1 + d + d * d > features:
        d -= 1
    return d


def basis_rows(kind: str, features: int) -> int:
    """P, the number of basis rows a map of ``features`` features needs."""
    return taylor_dim(features) if kind == "taylor" else features


def median_gamma(x: torch.Tensor, centers: torch.Tensor, max_points: int = 2048) -> torch.Tensor:
    """Median-distance heuristic per head: gamma = 1 / median ||x - c||^2 over samples and centres.

    x [n, H, N] samples, centers [H, M, N] -> gamma [H].
    """
    x = x[:max_points].to(centers.dtype)
    d2 = (x[:, :, None, :] - centers[None]).square().sum(-1)              # [n, H, M]
    med = d2.permute(1, 0, 2).reshape(centers.shape[0], -1).median(dim=-1).values
    return 1.0 / med.clamp_min(1e-6)


def orthogonal_gaussian(H: int, M: int, N: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[H, M, N] rows drawn in orthogonal blocks of N, each row rescaled to a chi-distributed Gaussian norm
    (FAVOR+'s variance-reducing construction)."""
    out = []
    for _ in range(H):
        blocks, left = [], M
        while left > 0:
            q, r = torch.linalg.qr(torch.randn(N, N, generator=generator, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))[None, :]   # sign fix: Haar-distributed, rows uniform
            blocks.append(q.T[: min(left, N)])
            left -= N
        w = torch.cat(blocks)
        norms = torch.randn(M, N, generator=generator, dtype=torch.float64).norm(dim=-1, keepdim=True)
        out.append(w * norms)
    return torch.stack(out).float()


__all__ = ["FEATURE_MAPS", "FeatureMap", "RBFFeatures", "TaylorFeatures", "PerformerFeatures",
           "make_feature_map", "taylor_dim", "basis_rows", "median_gamma", "orthogonal_gaussian"]

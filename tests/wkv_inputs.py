"""Random WKV-7 inputs shaped like RWKV-7's (shared by the torch, Triton and fla backend tests)."""

from __future__ import annotations

import torch

NAMES = ("r", "logw", "k", "v", "a", "b", "s0")


def make_inputs(seed: int, B: int, T: int, H: int, K: int, V: int, n_states: int | None = None,
                dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """[r, logw, k, v, a, b, s0]: decays in (0.545, 1), a = -kk, b = kk * sigmoid(.), unit-norm kk.
    ``n_states`` overrides the number of initial states (packed variable-length batches)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    logw = -0.606531 * torch.sigmoid(rnd(B, T, H, K))
    kk = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    a_coef = torch.sigmoid(rnd(B, T, H, K))
    s0 = 0.5 * rnd(n_states if n_states is not None else B, H, V, K)
    xs = [rnd(B, T, H, K), logw, rnd(B, T, H, K), rnd(B, T, H, V), -kk, kk * a_coef, s0]
    return [x.to(dtype) for x in xs]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.detach().double().cpu() - ref.detach().cpu()).norm() / ref.detach().cpu().norm().clamp_min(1e-30)).item()

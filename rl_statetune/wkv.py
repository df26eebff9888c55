"""The WKV-7 recurrence: a float64-capable naive reference, a chunked pure-torch path, and the dispatcher.

Per batch row and head, with the state S of shape [V, K] (row = value index, the `rwkv` package layout):

    S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T ,     y_t = S_t r_t

RWKV-7 uses a = -kk and b = kk * a_coef. Every function here takes the *log* decay ``logw = log(w_t) <= 0``.

Tensor layout for all backends: r, logw, k, a, b are [B, T, H, K]; v is [B, T, H, V]; the state is [B, H, V, K].
V and K may differ (the upscaled state of ``rl_statetune.upscale`` has K = number of features).

Chunked form (derivation in docs/wkv.md). Inside a chunk of C tokens let cs_t = sum_{i<=t} logw_i and
u_t = S_{t-1} a_t. Writing every term relative to the chunk start state S0,

    U  = (I - L_ab)^{-1} (A^- S0^T + L_ak V)            (strictly lower-triangular L's: an exact solve)
    Y  = R^- S0^T + M_rb U + M_rk V                       (inclusive lower-triangular M's)
    S_C = S0 diag(e^{cs_C}) + U^T B^e + V^T K^e

with A^- = a e^{cs - logw}, R^- = r e^{cs}, b^+ = b e^{-cs}, k^+ = k e^{-cs}, B^e = b e^{cs_C - cs}, and
L_ab = tril(A^- b^{+T}, -1), L_ak = tril(A^- k^{+T}, -1), M_rb = tril(R^- b^{+T}), M_rk = tril(R^- k^{+T}).
Substituting U makes everything S0-free except two small products, so all chunks are precomputed at once
(batched matmuls) and the only sequential part is ``S <- S P_c + E_c`` and ``Y_c = Q_c S^T + Y0_c``.
"""

from __future__ import annotations

import math

import torch

DEFAULT_CHUNK = 32
SHORT_SEQUENCE = 4  # up to this many tokens the plain loop beats padding a chunk


def wkv7_naive(r, logw, k, v, a, b, s0=None):
    """Token-by-token recurrence. Differentiable, slow: the reference for tests and the baseline for benchmarks."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    S = r.new_zeros(B, H, V, K) if s0 is None else s0.to(r.dtype)
    w = logw.exp()
    ys = []
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])
        S = (S * w[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        ys.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    y = torch.stack(ys, dim=1) if T > 0 else r.new_zeros(B, 0, H, V)
    return y, S


def _chunk_terms(r, logw, k, v, a, b, C):
    """All S0-independent per-chunk quantities, computed for every chunk at once. Inputs [B,H,n,C,*]."""
    cs = logw.cumsum(dim=-2)
    cs_last = cs[..., -1:, :]
    a_m = a * (cs - logw).exp()
    r_m = r * cs.exp()
    inv = (-cs).exp()
    b_p, k_p = b * inv, k * inv
    tail = (cs_last - cs).exp()
    b_e, k_e = b * tail, k * tail

    L_ab = torch.tril(a_m @ b_p.transpose(-1, -2), -1)
    L_ak = torch.tril(a_m @ k_p.transpose(-1, -2), -1)
    M_rb = torch.tril(r_m @ b_p.transpose(-1, -2))
    M_rk = torch.tril(r_m @ k_p.transpose(-1, -2))

    eye = torch.eye(C, dtype=r.dtype, device=r.device)
    rhs = torch.cat([a_m, L_ak @ v], dim=-1)
    sol = torch.linalg.solve_triangular(eye - L_ab, rhs, upper=False, unitriangular=True)
    W, U0 = sol[..., : a.shape[-1]], sol[..., a.shape[-1]:]

    Q = r_m + M_rb @ W                                    # [.., C, K]   reads S0
    Y0 = M_rb @ U0 + M_rk @ v                             # [.., C, V]   S0-free output
    P = torch.diag_embed(cs_last.squeeze(-2).exp()) + W.transpose(-1, -2) @ b_e   # [.., K, K]
    E = U0.transpose(-1, -2) @ b_e + v.transpose(-1, -2) @ k_e                  # [.., V, K]
    return Q, Y0, P, E


def wkv7_chunked(r, logw, k, v, a, b, s0=None, chunk_size: int = DEFAULT_CHUNK):
    """Chunked matrix form (see module docstring). Autograd flows to every input, s0 included.

    The factors e^{+-cs} span e^{chunk_size * max|logw|}; with RWKV-7's |logw| <= 0.61 and chunk 32 that is
    about 3e8, well inside float32 (measured: 2e-7 relative error vs float64). Computation runs in float32 at least (float64 if given).
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype = r.dtype
    cdt = torch.float64 if r.dtype == torch.float64 else torch.float32
    C = chunk_size
    n = max(1, math.ceil(T / C))
    pad = n * C - T

    def prep(x):
        x = x.to(cdt)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))   # identity steps: logw=0, k=v=a=b=0
        return x.view(B, n, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)  # [B,H,n,C,*]

    Q, Y0, P, E = _chunk_terms(*(prep(x) for x in (r, logw, k, v, a, b)), C)
    S = r.new_zeros(B, H, V, K, dtype=cdt) if s0 is None else s0.to(cdt)
    ys = []
    for c in range(n):
        ys.append(Y0[:, :, c] + Q[:, :, c] @ S.transpose(-1, -2))
        S = S @ P[:, :, c] + E[:, :, c]
    y = torch.stack(ys, dim=2).permute(0, 2, 3, 1, 4).reshape(B, n * C, H, V)[:, :T]
    return y.to(out_dtype), S


def mask_after_lengths(lengths, logw, k, v, a, b):
    """Turn positions t >= lengths[b] into identity steps so the final state is the state at each length."""
    T = logw.shape[1]
    keep = (torch.arange(T, device=logw.device)[None, :] < lengths.to(logw.device)[:, None])[..., None, None]
    return (logw * keep, k * keep, v * keep, a * keep, b * keep)


def wkv7(r, logw, k, v, a, b, s0=None, lengths=None, backend: str = "auto", chunk_size: int = DEFAULT_CHUNK):
    """Dispatch the recurrence. ``lengths`` [B] handles right-padded batches of different lengths: the Triton
    backend packs the rows into one sequence with ``cu_seqlens`` (no work on padding); the others turn padded
    steps into identity steps. Outputs at padded positions are 0 (Triton) or meaningless (others).

    backend: "auto" (Triton on CUDA when available; on CPU the token loop for a few tokens, e.g. decoding,
    and the chunked path otherwise), "torch", "naive", "triton", "fla". With "triton", a single token without
    gradients (a decoding step) runs the one-step decode kernel.
    Returns (y [B,T,H,V], final state [B,H,V,K] in float32 or the input's float64).
    """
    _check_shapes(r, logw, k, v, a, b, s0)
    if backend == "auto":
        if r.is_cuda and _triton_available():
            backend = "triton"
        else:
            backend = "naive" if r.shape[1] <= SHORT_SEQUENCE else "torch"
    if backend == "triton" and r.shape[1] == 1 and lengths is None and not _needs_grad(r, logw, k, v, a, b, s0):
        from rl_statetune_kernels import wkv7_triton_decode

        # generation: one fused step, no checkpoints
        return wkv7_triton_decode(r, logw, k, v, a, b, None if s0 is None else s0.float())
    if lengths is not None and backend == "triton":
        return _triton_packed(r, logw, k, v, a, b, s0, lengths)
    if lengths is not None:
        logw, k, v, a, b = mask_after_lengths(lengths, logw, k, v, a, b)
    if backend == "torch":
        return wkv7_chunked(r, logw, k, v, a, b, s0, chunk_size)
    if backend == "naive":
        return wkv7_naive(r, logw, k, v, a, b, s0)
    if backend == "triton":
        from rl_statetune_kernels import wkv7_triton
        return wkv7_triton(r, logw, k, v, a, b, s0)
    if backend == "fla":
        from rl_statetune_kernels import wkv7_fla
        return wkv7_fla(r, logw, k, v, a, b, s0)
    raise ValueError(f"unknown WKV backend {backend!r}; choose auto, torch, naive, triton or fla")


def _triton_packed(r, logw, k, v, a, b, s0, lengths):
    """Right-padded [B, T] batch -> one packed sequence with cu_seqlens, so the kernels skip the padding."""
    from rl_statetune_kernels import wkv7_triton

    B, T, H, _ = r.shape
    lengths = lengths.to(device=r.device, dtype=torch.int64)
    if bool(((lengths < 0) | (lengths > T)).any()):
        raise ValueError(f"wkv7: lengths must lie in [0, {T}], got {lengths.tolist()}")
    keep = (torch.arange(T, device=r.device)[None, :] < lengths[:, None]).flatten().nonzero().squeeze(1)
    packed = [x.reshape(B * T, H, x.shape[-1]).index_select(0, keep).unsqueeze(0) for x in (r, logw, k, v, a, b)]
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    y_packed, sT = wkv7_triton(*packed, s0, cu_seqlens=cu_seqlens)
    y = y_packed.new_zeros(B * T, H, v.shape[-1]).index_copy(0, keep, y_packed[0])
    return y.view(B, T, H, v.shape[-1]), sT


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def _check_shapes(r, logw, k, v, a, b, s0):
    for name, x in (("logw", logw), ("k", k), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"wkv7: {name} has shape {tuple(x.shape)}, expected r's {tuple(r.shape)} [B,T,H,K]")
    if v.shape[:3] != r.shape[:3]:
        raise ValueError(f"wkv7: v has shape {tuple(v.shape)}, expected [B,T,H,V] with B,T,H = {tuple(r.shape[:3])}")
    if s0 is not None:
        want = (r.shape[0], r.shape[2], v.shape[-1], r.shape[-1])
        if tuple(s0.shape) != want:
            raise ValueError(f"wkv7: state has shape {tuple(s0.shape)}, expected [B,H,V,K] = {want}")


def _triton_available() -> bool:
    try:
        import rl_statetune_kernels  # noqa: F401
        return True
    except ImportError:
        return False

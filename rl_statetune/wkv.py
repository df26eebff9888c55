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
Substituting U makes everything S0-free except two small products, so the chunks are precomputed with batched
matmuls (in blocks of about 32 (head, chunk) pairs, which keeps the intermediates in cache) and the only
sequential part is ``S <- S P_c + E_c`` and ``Y_c = Q_c S^T + Y0_c``.
"""

from __future__ import annotations

import math

import torch

DECAY_SCALE = 0.606531  # w = exp(-DECAY_SCALE * sigmoid(w_raw)); exp(-0.5), as written in the reference
DEFAULT_CHUNK = 32  # the torch chunked path (CPU); the Triton kernels have their own, kernels.plan.DEFAULT_CHUNK = 16,
#                    tuned to their register budget on sm_90 (docs/kernels.md)
SHORT_SEQUENCE = 4  # up to this many tokens the plain loop beats padding a chunk
_BLOCK_PAIRS = 32   # (head, chunk) pairs per precompute block of the chunked path


def wkv7_naive(r, logw, k, v, a, b, s0=None):
    """Token-by-token recurrence. Differentiable, slow: the reference for tests and the baseline for benchmarks.
    Accumulates in float32 at least (float64 if given); y comes back in r's dtype, the state in float32/64."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    cdt = accumulation_dtype(r.dtype)
    out_dtype = r.dtype
    r, logw, k, v, a, b = (x.to(cdt) for x in (r, logw, k, v, a, b))
    S = r.new_zeros(B, H, V, K) if s0 is None else s0.to(cdt)
    w = logw.exp()
    ys = []
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])
        S = (S * w[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        ys.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    y = torch.stack(ys, dim=1) if T > 0 else r.new_zeros(B, 0, H, V)
    return y.to(out_dtype), S


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence accumulates in: float32 for float32 / bfloat16 / float16 inputs, float64 for
    float64. Half-precision states lose the small decayed contributions within a few dozen tokens."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_terms(r, logw, k, v, a, b):
    """The S0-independent quantities Q, Y0, P, E of a block of chunks, all at once. Inputs [G, C, *] contiguous."""
    C = r.shape[-2]
    cs = logw.cumsum(dim=-2)
    growth = cs.exp()                                     # e^{cs}; e^{-cs} = 1 / e^{cs}
    inv = growth.reciprocal()
    a_m = a * growth * (-logw).exp()
    r_m = r * growth
    tail = growth[..., -1:, :] * inv                      # e^{cs_C - cs}
    b_e, k_e = b * tail, k * tail

    # the four C x C score matrices from one [2C, K] x [K, 2C] product
    scores = torch.cat([a_m, r_m], dim=-2) @ torch.cat([b * inv, k * inv], dim=-2).transpose(-1, -2)
    L_ab, L_ak = scores[:, :C, :C].tril(-1), scores[:, :C, C:].tril(-1)
    M_rb, M_rk = scores[:, C:, :C].tril(), scores[:, C:, C:].tril()

    # (I - L_ab)^{-1} by one unit-triangular solve against the identity (exact forward substitution; a solve
    # against the C x (K + V) right-hand side directly is ~2x slower in MKL's batched trsm), then matmuls
    eye = torch.eye(C, dtype=r.dtype, device=r.device)
    inverse = torch.linalg.solve_triangular(eye - L_ab, eye.expand_as(L_ab), upper=False, unitriangular=True)
    W = inverse @ a_m                                     # U = W S0^T + U0
    U0 = inverse @ (L_ak @ v)
    Q = torch.baddbmm(r_m, M_rb, W)                       # Y = Q S0^T + Y0
    Y0 = torch.baddbmm(M_rk @ v, M_rb, U0)
    P = W.transpose(-1, -2) @ b_e                         # [G, K, K]
    P.diagonal(dim1=-2, dim2=-1).add_(growth[:, -1])      # + diag(e^{cs_C})
    E = torch.cat([U0, v], dim=-2).transpose(-1, -2) @ torch.cat([b_e, k_e], dim=-2)          # [G, V, K]
    return Q, Y0, P, E


def _to_chunks(x, n, C):
    """[B, T, H, D] -> [n, B*H, C, D] contiguous, zero-padded to n * C steps (identity steps)."""
    B, T, H, D = x.shape
    if n * C != T:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n * C - T))
    return x.view(B, n, C, H, D).permute(1, 0, 3, 2, 4).reshape(n, B * H, C, D)


def _block_size(n, BH):
    """Chunks per block of the precompute: big enough for efficient batched matmuls, small enough that a
    block's intermediates stay in cache (measured on a 2-core EPYC: ~32 (head, chunk) pairs per block)."""
    return max(1, min(n, _BLOCK_PAIRS // BH))


class _ChunkedWKV(torch.autograd.Function):
    """The chunked form with a hand-written backward. The forward keeps no autograd graph: block by block it
    computes the chunk terms, then writes y and the next state in place. What it keeps depends on the gradients
    asked for:

    * only s0 (state tuning's first layer, whose inputs come from frozen weights): Q_c and P_c. With chunk c
      taking S_c to S_{c+1} = S_c P_c + E_c, the backward is the adjoint chain dS_c = dS_{c+1} P_c^T + dY_c^T Q_c
      (y and the final state are affine in s0);
    * the inputs too (the layers after the first): the chunk-start states S_c. The backward walks the blocks in
      reverse, recomputes each block's terms under autograd, runs the chain by hand (dQ_c = dY_c S_c,
      dP_c = S_c^T dS_{c+1}, dE_c = dS_{c+1}) and backpropagates into that block alone. Memory stays near the
      inputs' size instead of the ~6x that a graph over every block's intermediates holds, at about the same
      speed (docs/wkv.md).

    First-order gradients only (no double backward)."""

    @staticmethod
    def forward(ctx, s0, *chunks):
        n, BH, C = chunks[0].shape[:3]
        G = _block_size(n, BH)
        ctx.inputs_grad = any(ctx.needs_input_grad[1:])
        keep_qp = ctx.needs_input_grad[0] and not ctx.inputs_grad
        y = chunks[3].new_empty(n, BH, C, chunks[3].shape[-1])
        states = s0.new_empty(n, *s0.shape) if ctx.inputs_grad else None
        S, kept = s0, []
        for c0 in range(0, n, G):
            g = min(G, n - c0)
            Q, Y0, P, E = (t.unflatten(0, (g, BH)) for t in _chunk_terms(*_block(chunks, c0, g)))
            for j in range(g):
                if states is not None:
                    states[c0 + j] = S
                torch.baddbmm(Y0[j], Q[j], S.transpose(-1, -2), out=y[c0 + j])
                S = E[j].baddbmm_(S, P[j])
            if keep_qp:
                kept += [Q, P]
        if ctx.inputs_grad:
            ctx.save_for_backward(states, *chunks)
        else:
            ctx.save_for_backward(*kept)
        return y, S

    @staticmethod
    def backward(ctx, dy, dsT):
        dy = dy.contiguous()
        dS = dsT                                 # autograd passes zeros for an unused output
        if not ctx.inputs_grad:
            kept, c = ctx.saved_tensors, dy.shape[0]
            for Q, P in reversed(list(zip(kept[::2], kept[1::2]))):
                for j in reversed(range(Q.shape[0])):
                    c -= 1
                    dS = torch.bmm(dS, P[j].transpose(-1, -2)).baddbmm_(dy[c].transpose(-1, -2), Q[j])
            return (dS,) + (None,) * 6

        states, *chunks = ctx.saved_tensors
        n, BH, C = chunks[0].shape[:3]
        G = _block_size(n, BH)
        grads = [torch.empty_like(x) for x in chunks]
        for c0 in reversed(range(0, n, G)):
            g = min(G, n - c0)
            block = [x.detach().requires_grad_() for x in _block(chunks, c0, g)]
            with torch.enable_grad():
                terms = _chunk_terms(*block)
            Q, _, P, E = (t.detach().unflatten(0, (g, BH)) for t in terms)
            dQ, dP, dE = torch.empty_like(Q), torch.empty_like(P), torch.empty_like(E)
            for j in reversed(range(g)):
                c, Sc = c0 + j, states[c0 + j]
                torch.bmm(dy[c], Sc, out=dQ[j])                                  # y_c = Y0 + Q S_c^T
                torch.bmm(Sc.transpose(-1, -2), dS, out=dP[j])                   # S_{c+1} = S_c P + E
                dE[j] = dS
                dS = torch.bmm(dS, P[j].transpose(-1, -2)).baddbmm_(dy[c].transpose(-1, -2), Q[j])
            d_terms = [dQ.flatten(0, 1), dy[c0:c0 + g].flatten(0, 1), dP.flatten(0, 1), dE.flatten(0, 1)]
            for out, d in zip(grads, torch.autograd.grad(terms, block, d_terms)):
                out[c0:c0 + g] = d.unflatten(0, (g, BH))
        return (dS if ctx.needs_input_grad[0] else None,
                *(d if need else None for d, need in zip(grads, ctx.needs_input_grad[1:])))


def _block(chunks, c0, g):
    """Chunks c0 .. c0+g-1 of each [n, BH, C, *] input as one [g * BH, C, *] batch (a view)."""
    return [x[c0:c0 + g].flatten(0, 1) for x in chunks]


def wkv7_chunked(r, logw, k, v, a, b, s0=None, chunk_size: int = DEFAULT_CHUNK):
    """Chunked matrix form (see module docstring). Differentiable in every input and s0, through the
    hand-written backward of ``_ChunkedWKV`` (first order). ``chunk_size`` is the largest
    chunk: the sequence is cut into ceil(T / chunk_size) chunks of near-equal length (T = 40 runs as 2 x 20).

    The factors e^{+-cs} span e^{chunk_size * max|logw|}; with RWKV-7's |logw| <= 0.61 and chunk 32 that is
    about 3e8, well inside float32 (measured: 2e-7 relative error vs float64). Computation runs in float32 at
    least (float64 if given).
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    cdt = accumulation_dtype(r.dtype)
    n = max(1, math.ceil(T / chunk_size))
    chunk_size = max(1, math.ceil(T / n))        # n near-equal chunks: padding < n steps, not up to a whole chunk
    chunks = [_to_chunks(x.to(cdt), n, chunk_size) for x in (r, logw, k, v, a, b)]
    S = r.new_zeros(B * H, V, K, dtype=cdt) if s0 is None else s0.to(cdt).reshape(B * H, V, K)
    y, S = _ChunkedWKV.apply(S, *chunks)
    y = y.view(n, B, H, chunk_size, V).permute(1, 0, 3, 2, 4).reshape(B, n * chunk_size, H, V)[:, :T]
    return y.to(r.dtype), S.view(B, H, V, K)


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

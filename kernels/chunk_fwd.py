"""Chunked forward Triton kernel of WKV-7: per chunk of C tokens, matrix products instead of a token loop.

Within a chunk starting from state S0 (``docs/wkv.md`` derives it), with cs = cumsum(logw) over the chunk,

    A- = a e^{cs - logw}   R- = r e^{cs}   b+ = b e^{-cs}   k+ = k e^{-cs}   B^e, K^e = (b, k) e^{cs_C - cs}
    L_ab = tril(A- b+^T, -1)   L_ak = tril(A- k+^T, -1)   M_rb = tril(R- b+^T)   M_rk = tril(R- k+^T)
    U   = (I - L_ab)^{-1} (A- S0^T + L_ak V)          the "removal" reads u_t = S_{t-1} a_t of all C tokens
    Y   = R- S0^T + M_rb U + M_rk V
    S_C = S0 diag(e^{cs_C}) + U^T B^e + V^T K^e

Every product is a ``tl.dot`` on [C, K], [C, C] or [C, BV] tiles; (I - L_ab)^{-1} is built by forward
substitution on the C x C tile. One program owns rows [i_v*BV, (i_v+1)*BV) of the state of one (sequence, head)
and walks its chunks in order; positions past a sequence's end load as identity steps (logw = k = v = a = b = 0).
With ``STORE_CKPT`` it writes S0 of every chunk, which the chunked backward restarts from.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_helpers import load_state, seq_bounds, state_block
from .plan import WKVPlan, check_runnable, forward_buffers


@triton.jit
def load_chunk(r, logw, k, v, a, b, t0, eos, i_h, o_c, o_k, o_v, m_k, m_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """Tokens [t0, t0 + C) of one head as float32 tiles ([C, BK] and v [C, BV]); rows at or past eos are 0."""
    rows = t0 + o_c
    m_t = rows < eos
    p_k = (rows[:, None] * H + i_h) * K + o_k[None, :]
    p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
    m_ck = m_t[:, None] & m_k[None, :]
    m_cv = m_t[:, None] & m_v[None, :]
    r_c = tl.load(r + p_k, mask=m_ck, other=0.).to(tl.float32)
    lw_c = tl.load(logw + p_k, mask=m_ck, other=0.).to(tl.float32)
    k_c = tl.load(k + p_k, mask=m_ck, other=0.).to(tl.float32)
    a_c = tl.load(a + p_k, mask=m_ck, other=0.).to(tl.float32)
    b_c = tl.load(b + p_k, mask=m_ck, other=0.).to(tl.float32)
    v_c = tl.load(v + p_v, mask=m_cv, other=0.).to(tl.float32)
    return r_c, lw_c, k_c, a_c, b_c, v_c, p_k, p_v, m_ck, m_cv


@triton.jit
def chunk_factors(r_c, lw_c, k_c, a_c, b_c, o_c, CHUNK: tl.constexpr):
    """The decay-rescaled tiles of one chunk: (cs, A-, R-, b+, k+, B^e, K^e, e^{cs_C})."""
    cs = tl.cumsum(lw_c, axis=0)
    cs_last = tl.sum(tl.where(o_c[:, None] == CHUNK - 1, cs, 0.), axis=0)
    inv = tl.exp(-cs)
    tail = tl.exp(cs_last[None, :] - cs)
    return (cs, a_c * tl.exp(cs - lw_c), r_c * tl.exp(cs), b_c * inv, k_c * inv, b_c * tail, k_c * tail,
            tl.exp(cs_last))


@triton.jit
def chunk_scores(am, rm, bp, kp, o_c, PREC: tl.constexpr):
    """L_ab, L_ak (strictly lower) and M_rb, M_rk (lower incl. diagonal), all [C, C]."""
    strict = o_c[:, None] > o_c[None, :]
    incl = o_c[:, None] >= o_c[None, :]
    L_ab = tl.where(strict, tl.dot(am, tl.trans(bp), input_precision=PREC), 0.)
    L_ak = tl.where(strict, tl.dot(am, tl.trans(kp), input_precision=PREC), 0.)
    M_rb = tl.where(incl, tl.dot(rm, tl.trans(bp), input_precision=PREC), 0.)
    M_rk = tl.where(incl, tl.dot(rm, tl.trans(kp), input_precision=PREC), 0.)
    return L_ab, L_ak, M_rb, M_rk


@triton.jit
def unit_lower_inverse(L, o_c, CHUNK: tl.constexpr):
    """(I - L)^{-1} for strictly lower-triangular L: row i of X = I + L X is e_i + sum_{j<i} L[i, j] X[j]."""
    X = tl.where(o_c[:, None] == o_c[None, :], 1., 0.)
    for i in tl.static_range(1, CHUNK):
        row = tl.sum(tl.where(o_c[:, None] == i, L, 0.), axis=0)          # L[i, :]
        X = tl.where(o_c[:, None] == i, X + tl.sum(row[:, None] * X, axis=0)[None, :], X)
    return X


@triton.jit(do_not_specialize=["T"])
def _wkv7_chunk_fwd_kernel(r, logw, k, v, a, b, s0, y, sT, ckpt, cu_seqlens, chunk_offsets, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                           BV: tl.constexpr, CHUNK: tl.constexpr, HAS_S0: tl.constexpr,
                           STORE_CKPT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)

    o_c = tl.arange(0, CHUNK)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    state_base = i_nh.to(tl.int64) * V * K
    S = load_state(s0, i_nh, o_s, m_s, HAS_S0, V, K, BV, BK)

    n_chunks = (eos - bos + CHUNK - 1) // CHUNK
    for i_c in range(0, n_chunks):
        t0 = bos + i_c * CHUNK
        if STORE_CKPT:
            tl.store(ckpt + ((c0 + i_c) * H + i_h) * V * K + o_s, S, mask=m_s)
        r_c, lw_c, k_c, a_c, b_c, v_c, p_k, p_v, m_ck, m_cv = load_chunk(
            r, logw, k, v, a, b, t0, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
        cs, am, rm, bp, kp, be, ke, dec = chunk_factors(r_c, lw_c, k_c, a_c, b_c, o_c, CHUNK)
        L_ab, L_ak, M_rb, M_rk = chunk_scores(am, rm, bp, kp, o_c, PREC)
        Tinv = unit_lower_inverse(L_ab, o_c, CHUNK)
        S_t = tl.trans(S)                                                            # [BK, BV]
        Z = tl.dot(am, S_t, input_precision=PREC) + tl.dot(L_ak, v_c, input_precision=PREC)
        U = tl.dot(Tinv, Z, input_precision=PREC)                                   # [C, BV]
        Y = (tl.dot(rm, S_t, input_precision=PREC) + tl.dot(M_rb, U, input_precision=PREC)
             + tl.dot(M_rk, v_c, input_precision=PREC))
        tl.store(y + p_v, Y.to(y.dtype.element_ty), mask=m_cv)
        S = (S * dec[None, :] + tl.dot(tl.trans(U), be, input_precision=PREC)
             + tl.dot(tl.trans(v_c), ke, input_precision=PREC))

    tl.store(sT + state_base + o_s, S, mask=m_s)


def wkv7_chunk_fwd(plan: WKVPlan, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   a: torch.Tensor, b: torch.Tensor, s0: torch.Tensor | None, store_checkpoints: bool):
    """Launch the chunked forward on contiguous [total_T, H, *] inputs. Returns (y, sT float32, checkpoints)."""
    check_runnable(_wkv7_chunk_fwd_kernel, r.device)
    H, K, V = plan.H, plan.K, plan.V
    y, sT, ckpt = forward_buffers(plan, r, v, store_checkpoints)
    _wkv7_chunk_fwd_kernel[(plan.NV, plan.N * H)](
        r, logw, k, v, a, b, s0, y, sT, ckpt, plan.cu_seqlens, plan.chunk_offsets, plan.T,
        H=H, K=K, V=V, BK=plan.BK, BV=plan.BV, CHUNK=plan.chunk, HAS_S0=s0 is not None,
        STORE_CKPT=store_checkpoints, IS_VARLEN=plan.is_varlen, PREC=plan.dot_precision,
        num_warps=plan.num_warps,
    )
    return y, sT, ckpt

"""Chunked forward Triton kernels of WKV-7: per chunk of C tokens, matrix products instead of a token loop.

Within a chunk starting from state S0 (``docs/wkv.md`` derives it), with cs = cumsum(logw) over the chunk,

    A- = a e^{cs - logw}   R- = r e^{cs}   b+ = b e^{-cs}   k+ = k e^{-cs}   B^e, K^e = (b, k) e^{cs_C - cs}
    L_ab = tril(A- b+^T, -1)   L_ak = tril(A- k+^T, -1)   M_rb = tril(R- b+^T)   M_rk = tril(R- k+^T)
    W = (I - L_ab)^{-1} A-     U0 = (I - L_ab)^{-1} L_ak V     Q = R- + M_rb W     Y0 = M_rb U0 + M_rk V

and then U = W S0^T + U0 (the "removal" reads u_t = S_{t-1} a_t of all C tokens), Y = Q S0^T + Y0 and
S_C = S0 diag(e^{cs_C}) + U^T B^e + V^T K^e. Three launches, as in fla's chunked kernels:

1. ``_chunk_local_kernel``, one program per (chunk, head), all chunks in parallel: W, U0, Q, Y0 to global memory
   (fp32, laid out like the inputs). (I - L_ab)^{-1} is built by forward substitution on the C x C tile.
2. ``_chunk_states_kernel``, one program per (value block, sequence, head), sequential over chunks: three
   ``tl.dot`` per chunk; writes S0 of every chunk (the checkpoints) and the final state.
3. ``_chunk_output_kernel``, one program per (chunk, head, value block), in parallel: Y = Q S0^T + Y0.

Positions past a sequence's end load as identity steps (logw = k = v = a = b = 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_helpers import load_state, seq_bounds, state_block
from .plan import FP_FUSION, WKVPlan, check_runnable, forward_buffers


@triton.jit
def chunk_tile(t0, eos, i_h, o_c, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """Offsets and masks of tokens [t0, t0 + C) of head ``i_h``: key-sized [C, BK] and value-sized [C, BV] tiles."""
    rows = t0 + o_c
    m_t = rows < eos
    p_k = (rows[:, None] * H + i_h) * K + o_k[None, :]
    p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
    return p_k, p_v, m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]


@triton.jit
def load_chunk(r, logw, k, v, a, b, t0, eos, i_h, o_c, o_k, o_v, m_k, m_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """Tokens [t0, t0 + C) of one head as float32 tiles ([C, BK] and v [C, BV]); rows at or past eos are 0."""
    p_k, p_v, m_ck, m_cv = chunk_tile(t0, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
    r_c = tl.load(r + p_k, mask=m_ck, other=0.).to(tl.float32)
    lw_c = tl.load(logw + p_k, mask=m_ck, other=0.).to(tl.float32)
    k_c = tl.load(k + p_k, mask=m_ck, other=0.).to(tl.float32)
    a_c = tl.load(a + p_k, mask=m_ck, other=0.).to(tl.float32)
    b_c = tl.load(b + p_k, mask=m_ck, other=0.).to(tl.float32)
    v_c = tl.load(v + p_v, mask=m_cv, other=0.).to(tl.float32)
    return r_c, lw_c, k_c, a_c, b_c, v_c, p_k, p_v, m_ck, m_cv


@triton.jit
def chunk_decays(lw_c, o_c, CHUNK: tl.constexpr):
    """The decays of one chunk: cs = cumsum(logw), e^{-cs}, e^{cs_C - cs} [C, BK] and e^{cs_C} [BK]."""
    cs = tl.cumsum(lw_c, axis=0)
    cs_last = tl.sum(tl.where(o_c[:, None] == CHUNK - 1, cs, 0.), axis=0)
    return cs, tl.exp(-cs), tl.exp(cs_last[None, :] - cs), tl.exp(cs_last)


@triton.jit
def chunk_factors(r_c, lw_c, k_c, a_c, b_c, o_c, CHUNK: tl.constexpr):
    """The decay-rescaled tiles of one chunk: (cs, A-, R-, b+, k+, B^e, K^e, e^{cs_C}, e^{-cs}, e^{cs_C - cs})."""
    cs, inv, tail, dec = chunk_decays(lw_c, o_c, CHUNK)
    return (cs, a_c * tl.exp(cs - lw_c), r_c * tl.exp(cs), b_c * inv, k_c * inv, b_c * tail, k_c * tail, dec,
            inv, tail)


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


@triton.jit
def chunk_position(chunk_index, cu_seqlens, chunk_offsets, i_c, T, CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Sequence, first token and end of sequence of global chunk ``i_c`` (varlen: from the host's chunk_index)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_index + i_c * 2).to(tl.int64)
        i_local = tl.load(chunk_index + i_c * 2 + 1).to(tl.int64)
    else:
        per_seq = (T + CHUNK - 1) // CHUNK
        i_n = (i_c // per_seq).to(tl.int64)
        i_local = (i_c % per_seq).to(tl.int64)
    bos, eos, _ = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)
    return i_n, bos + i_local * CHUNK, eos


@triton.jit(do_not_specialize=["T"])
def _chunk_local_kernel(r, logw, k, v, a, b, W, U0, Q, Y0, chunk_index, cu_seqlens, chunk_offsets, T,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                        CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                        WITH_VALUES: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, eos = chunk_position(chunk_index, cu_seqlens, chunk_offsets, i_c, T, CHUNK, IS_VARLEN)
    o_c = tl.arange(0, CHUNK)
    o_k, o_v, m_k, m_v, _, _ = state_block(0, K, V, BK, BVF)
    r_c, lw_c, k_c, a_c, b_c, v_c, p_k, p_v, m_ck, m_cv = load_chunk(
        r, logw, k, v, a, b, t0, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
    _, am, rm, bp, kp, _, _, _, _, _ = chunk_factors(r_c, lw_c, k_c, a_c, b_c, o_c, CHUNK)
    L_ab, L_ak, M_rb, M_rk = chunk_scores(am, rm, bp, kp, o_c, PREC)
    Tinv = unit_lower_inverse(L_ab, o_c, CHUNK)
    W_c = tl.dot(Tinv, am, input_precision=PREC)
    tl.store(W + p_k, W_c, mask=m_ck)
    tl.store(Q + p_k, rm + tl.dot(M_rb, W_c, input_precision=PREC), mask=m_ck)
    if WITH_VALUES:
        U0_c = tl.dot(Tinv, tl.dot(L_ak, v_c, input_precision=PREC), input_precision=PREC)
        tl.store(U0 + p_v, U0_c, mask=m_cv)
        tl.store(Y0 + p_v, tl.dot(M_rb, U0_c, input_precision=PREC) + tl.dot(M_rk, v_c, input_precision=PREC),
                 mask=m_cv)


@triton.jit(do_not_specialize=["T"])
def _chunk_states_kernel(logw, k, v, b, W, U0, s0, sT, ckpt, cu_seqlens, chunk_offsets, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         CHUNK: tl.constexpr, HAS_S0: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)
    o_c = tl.arange(0, CHUNK)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    S = load_state(s0, i_nh, o_s, m_s, HAS_S0, V, K, BV, BK)
    n_chunks = (eos - bos + CHUNK - 1) // CHUNK
    for j in range(0, n_chunks):
        tl.store(ckpt + ((c0 + j) * H + i_h) * V * K + o_s, S, mask=m_s)
        p_k, p_v, m_ck, m_cv = chunk_tile(bos + j * CHUNK, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
        lw_c = tl.load(logw + p_k, mask=m_ck, other=0.).to(tl.float32)
        b_c = tl.load(b + p_k, mask=m_ck, other=0.).to(tl.float32)
        k_c = tl.load(k + p_k, mask=m_ck, other=0.).to(tl.float32)
        v_c = tl.load(v + p_v, mask=m_cv, other=0.).to(tl.float32)
        _, _, tail, dec = chunk_decays(lw_c, o_c, CHUNK)
        be, ke = b_c * tail, k_c * tail
        U = tl.dot(tl.load(W + p_k, mask=m_ck, other=0.), tl.trans(S), input_precision=PREC) + tl.load(
            U0 + p_v, mask=m_cv, other=0.)
        S = (S * dec[None, :] + tl.dot(tl.trans(U), be, input_precision=PREC)
             + tl.dot(tl.trans(v_c), ke, input_precision=PREC))
    tl.store(sT + i_nh.to(tl.int64) * V * K + o_s, S, mask=m_s)


@triton.jit(do_not_specialize=["T"])
def _chunk_output_kernel(Q, Y0, ckpt, y, chunk_index, cu_seqlens, chunk_offsets, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, eos = chunk_position(chunk_index, cu_seqlens, chunk_offsets, i_c, T, CHUNK, IS_VARLEN)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    p_k, p_v, m_ck, m_cv = chunk_tile(t0, eos, i_h, tl.arange(0, CHUNK), o_k, o_v, m_k, m_v, H, K, V)
    S = tl.load(ckpt + (i_c.to(tl.int64) * H + i_h) * V * K + o_s, mask=m_s, other=0.)
    Y = (tl.dot(tl.load(Q + p_k, mask=m_ck, other=0.), tl.trans(S), input_precision=PREC)
         + tl.load(Y0 + p_v, mask=m_cv, other=0.))
    tl.store(y + p_v, Y.to(y.dtype.element_ty), mask=m_cv)


def local_terms(plan: WKVPlan, r, logw, k, v, a, b, with_values: bool = True):
    """Launch ``_chunk_local_kernel``: W, Q [total_T, H, K] and U0, Y0 [total_T, H, V], all fp32. Without
    ``with_values`` (the backward needs only W and Q) U0 and Y0 are neither computed nor allocated (None)."""
    W, Q = (torch.empty(plan.total_T, plan.H, plan.K, device=r.device, dtype=torch.float32) for _ in range(2))
    U0, Y0 = ((torch.empty(plan.total_T, plan.H, plan.V, device=r.device, dtype=torch.float32) for _ in range(2))
              if with_values else (None, None))
    if plan.n_chunks:
        _chunk_local_kernel[(plan.n_chunks, plan.H)](
            r, logw, k, v, a, b, W, U0, Q, Y0, plan.chunk_index, plan.cu_seqlens, plan.chunk_offsets, plan.T,
            H=plan.H, K=plan.K, V=plan.V, BK=plan.BK, BVF=max(16, triton.next_power_of_2(plan.V)),
            CHUNK=plan.chunk, IS_VARLEN=plan.is_varlen, PREC=plan.dot_precision, WITH_VALUES=with_values,
            num_warps=plan.num_warps, enable_fp_fusion=FP_FUSION)
    return W, U0, Q, Y0


def wkv7_chunk_fwd(plan: WKVPlan, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   a: torch.Tensor, b: torch.Tensor, s0: torch.Tensor | None, store_checkpoints: bool):
    """Run the three forward kernels on contiguous [total_T, H, *] inputs. Returns (y, sT float32, checkpoints).

    The checkpoints (chunk-start states) are always computed, since the output kernel reads them."""
    check_runnable(_chunk_local_kernel, r.device)
    y, sT, ckpt = forward_buffers(plan, r, v, True)
    W, U0, Q, Y0 = local_terms(plan, r, logw, k, v, a, b)
    meta = dict(H=plan.H, K=plan.K, V=plan.V, BK=plan.BK, BV=plan.BV, CHUNK=plan.chunk, IS_VARLEN=plan.is_varlen,
                PREC=plan.dot_precision, num_warps=plan.num_warps, enable_fp_fusion=FP_FUSION)
    _chunk_states_kernel[(plan.NV, plan.N * plan.H)](
        logw, k, v, b, W, U0, s0, sT, ckpt, plan.cu_seqlens, plan.chunk_offsets, plan.T,
        HAS_S0=s0 is not None, **meta)
    if plan.n_chunks:
        _chunk_output_kernel[(plan.n_chunks, plan.H, plan.NV)](
            Q, Y0, ckpt, y, plan.chunk_index, plan.cu_seqlens, plan.chunk_offsets, plan.T, **meta)
    return y, sT, ckpt

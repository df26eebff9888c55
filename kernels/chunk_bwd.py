"""Chunked backward Triton kernels of WKV-7: the adjoint of ``chunk_fwd``'s per-chunk matrix form. Two launches
after recomputing W, U0, Q, Y0 with ``chunk_fwd.local_terms``:

1. ``_chunk_adjoint_kernel``, per (value block, sequence, head), sequential from the last chunk: carries
   D = dL/dS at the chunk's end, stores it per chunk, and steps back with three ``tl.dot``:
   D <- D diag(e^{cs_C}) + (D B^e^T) W + dY^T Q. It ends with ds0.
2. ``_chunk_grads_kernel``, per (chunk, head, value block), all chunks in parallel: from the forward's checkpoint
   S0 and the stored D it recomputes the chunk's tiles (U included) and differentiates them. With dY the chunk's
   output gradient:

    dU   = M_rb^T dY + B^e D^T             dZ = (I - L_ab)^{-T} dU          (Z = A- S0^T + L_ak V, U = (I-L_ab)^{-1} Z)
    dL_ab = tril(dZ U^T, -1)   dL_ak = tril(dZ V^T, -1)   dM_rb = tril(dY U^T)   dM_rk = tril(dY V^T)
    dA-  = dZ S0 + dL_ab b+ + dL_ak k+      dR- = dY S0 + dM_rb b+ + dM_rk k+
    db+  = dL_ab^T A- + dM_rb^T R-          dk+ = dL_ak^T A- + dM_rk^T R-      dB^e = U D    dK^e = V D
    dV   = L_ak^T dZ + M_rk^T dY + K^e D^T

   then back through the rescalings to r, a, b, k, and to logw through cs = cumsum(logw): dlogw is the reverse
   cumulative sum of dcs, plus dcs_C (which every token of the chunk feeds) and A-'s own e^{-logw}. (The step of
   kernel 1 is dZ^T A- + dY^T R- + D diag(e^{cs_C}) = dS0 of this chunk function, regrouped with W and Q.)

dv and ds0 are complete per value block; the K-sized gradients are sums over value rows, written as per-block
partials that the host adds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_fwd import (
    chunk_decays,
    chunk_factors,
    chunk_position,
    chunk_scores,
    chunk_tile,
    load_chunk,
    local_terms,
    unit_lower_inverse,
)
from .jit_helpers import load_state, seq_bounds, state_block
from .plan import FP_FUSION, WKVPlan, backward_buffers, check_runnable, sum_partials


@triton.jit(do_not_specialize=["T"])
def _chunk_adjoint_kernel(logw, b, W, Q, dy, dsT, ds0, dend, cu_seqlens, chunk_offsets, T,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          CHUNK: tl.constexpr, HAS_DY: tl.constexpr, HAS_DST: tl.constexpr,
                          IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)
    o_c = tl.arange(0, CHUNK)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    D = load_state(dsT, i_nh, o_s, m_s, HAS_DST, V, K, BV, BK)
    n_chunks = (eos - bos + CHUNK - 1) // CHUNK
    for j in range(0, n_chunks):
        i_c = n_chunks - 1 - j
        tl.store(dend + ((c0 + i_c) * H + i_h) * V * K + o_s, D, mask=m_s)
        p_k, p_v, m_ck, m_cv = chunk_tile(bos + i_c * CHUNK, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
        lw_c = tl.load(logw + p_k, mask=m_ck, other=0.).to(tl.float32)
        b_c = tl.load(b + p_k, mask=m_ck, other=0.).to(tl.float32)
        _, _, tail, dec = chunk_decays(lw_c, o_c, CHUNK)
        be = b_c * tail
        step = tl.dot(tl.dot(D, tl.trans(be), input_precision=PREC), tl.load(W + p_k, mask=m_ck, other=0.),
                      input_precision=PREC)
        if HAS_DY:
            dY = tl.load(dy + p_v, mask=m_cv, other=0.).to(tl.float32)
            step += tl.dot(tl.trans(dY), tl.load(Q + p_k, mask=m_ck, other=0.), input_precision=PREC)
        D = D * dec[None, :] + step
    tl.store(ds0 + i_nh.to(tl.int64) * V * K + o_s, D, mask=m_s)


@triton.jit(do_not_specialize=["T", "TOTAL_T"])
def _chunk_grads_kernel(r, logw, k, v, a, b, ckpt, dend, dy, dr, dlogw, dk, dv, da, db, chunk_index,
                        cu_seqlens, chunk_offsets, T, TOTAL_T,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        CHUNK: tl.constexpr, HAS_DY: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, eos = chunk_position(chunk_index, cu_seqlens, chunk_offsets, i_c, T, CHUNK, IS_VARLEN)
    o_c = tl.arange(0, CHUNK)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    strict = o_c[:, None] > o_c[None, :]
    incl = o_c[:, None] >= o_c[None, :]
    part = i_v.to(tl.int64) * TOTAL_T * H * K                  # this block's slice of the partial-sum buffers
    p_state = (i_c.to(tl.int64) * H + i_h) * V * K + o_s
    S0 = tl.load(ckpt + p_state, mask=m_s, other=0.)
    D = tl.load(dend + p_state, mask=m_s, other=0.)
    r_c, lw_c, k_c, a_c, b_c, v_c, p_k, p_v, m_ck, m_cv = load_chunk(
        r, logw, k, v, a, b, t0, eos, i_h, o_c, o_k, o_v, m_k, m_v, H, K, V)
    cs, am, rm, bp, kp, be, ke, dec, inv, tail = chunk_factors(r_c, lw_c, k_c, a_c, b_c, o_c, CHUNK)
    L_ab, L_ak, M_rb, M_rk = chunk_scores(am, rm, bp, kp, o_c, PREC)
    Tinv = unit_lower_inverse(L_ab, o_c, CHUNK)
    Z = tl.dot(am, tl.trans(S0), input_precision=PREC) + tl.dot(L_ak, v_c, input_precision=PREC)
    U = tl.dot(Tinv, Z, input_precision=PREC)                                   # [C, BV]
    if HAS_DY:
        dY = tl.load(dy + p_v, mask=m_cv, other=0.).to(tl.float32)
    else:
        dY = tl.zeros([CHUNK, BV], dtype=tl.float32)
    D_t = tl.trans(D)                                                            # [BK, BV]

    dU = tl.dot(tl.trans(M_rb), dY, input_precision=PREC) + tl.dot(be, D_t, input_precision=PREC)
    dZ = tl.dot(tl.trans(Tinv), dU, input_precision=PREC)
    dL_ab = tl.where(strict, tl.dot(dZ, tl.trans(U), input_precision=PREC), 0.)
    dL_ak = tl.where(strict, tl.dot(dZ, tl.trans(v_c), input_precision=PREC), 0.)
    dM_rb = tl.where(incl, tl.dot(dY, tl.trans(U), input_precision=PREC), 0.)
    dM_rk = tl.where(incl, tl.dot(dY, tl.trans(v_c), input_precision=PREC), 0.)

    dAm = (tl.dot(dZ, S0, input_precision=PREC) + tl.dot(dL_ab, bp, input_precision=PREC)
           + tl.dot(dL_ak, kp, input_precision=PREC))
    dRm = (tl.dot(dY, S0, input_precision=PREC) + tl.dot(dM_rb, bp, input_precision=PREC)
           + tl.dot(dM_rk, kp, input_precision=PREC))
    dBp = tl.dot(tl.trans(dL_ab), am, input_precision=PREC) + tl.dot(tl.trans(dM_rb), rm, input_precision=PREC)
    dKp = tl.dot(tl.trans(dL_ak), am, input_precision=PREC) + tl.dot(tl.trans(dM_rk), rm, input_precision=PREC)
    dBe = tl.dot(U, D, input_precision=PREC)
    dKe = tl.dot(v_c, D, input_precision=PREC)
    dv_c = (tl.dot(tl.trans(L_ak), dZ, input_precision=PREC) + tl.dot(tl.trans(M_rk), dY, input_precision=PREC)
            + tl.dot(ke, D_t, input_precision=PREC))

    dcs = dRm * rm + dAm * am - dBp * bp - dKp * kp - dBe * be - dKe * ke
    dcs_last = tl.sum(dBe * be + dKe * ke, axis=0) + tl.sum(S0 * D, axis=0) * dec
    dlw = tl.cumsum(dcs, axis=0, reverse=True) + dcs_last[None, :] - dAm * am

    tl.store(dv + p_v, dv_c.to(dv.dtype.element_ty), mask=m_cv)
    tl.store(dr + part + p_k, dRm * tl.exp(cs), mask=m_ck)
    tl.store(da + part + p_k, dAm * tl.exp(cs - lw_c), mask=m_ck)
    tl.store(db + part + p_k, dBp * inv + dBe * tail, mask=m_ck)
    tl.store(dk + part + p_k, dKp * inv + dKe * tail, mask=m_ck)
    tl.store(dlogw + part + p_k, dlw, mask=m_ck)


def wkv7_chunk_bwd(plan: WKVPlan, r, logw, k, v, a, b, ckpt: torch.Tensor, dy: torch.Tensor | None,
                   dsT: torch.Tensor | None):
    """Recompute the local terms, then run the two backward kernels. Returns float32 (dr, dlogw, dk, da, db)
    [total_T, H, K], dv [total_T, H, V] and ds0 [N, H, V, K]."""
    check_runnable(_chunk_grads_kernel, r.device)
    partial, dv, ds0 = backward_buffers(plan, r.device)
    dr, dlogw, dk, da, db = partial
    W, _, Q, _ = local_terms(plan, r, logw, k, v, a, b, with_values=False)
    dend = torch.empty_like(ckpt)
    meta = dict(H=plan.H, K=plan.K, V=plan.V, BK=plan.BK, BV=plan.BV, CHUNK=plan.chunk, HAS_DY=dy is not None,
                IS_VARLEN=plan.is_varlen, PREC=plan.dot_precision, num_warps=plan.num_warps,
                enable_fp_fusion=FP_FUSION)
    _chunk_adjoint_kernel[(plan.NV, plan.N * plan.H)](
        logw, b, W, Q, dy, dsT, ds0, dend, plan.cu_seqlens, plan.chunk_offsets, plan.T,
        HAS_DST=dsT is not None, **meta)
    if plan.n_chunks:
        _chunk_grads_kernel[(plan.n_chunks, plan.H, plan.NV)](
            r, logw, k, v, a, b, ckpt, dend, dy, dr, dlogw, dk, dv, da, db, plan.chunk_index,
            plan.cu_seqlens, plan.chunk_offsets, plan.T, plan.total_T, **meta)
    return (*sum_partials(partial), dv, ds0)

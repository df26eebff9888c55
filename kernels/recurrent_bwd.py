"""Recurrent backward Triton kernel of WKV-7 (reverse-time adjoint per token, replaying from chunk checkpoints).

With G_t = diag(w_t) + a_t b_t^T, S_t = S_{t-1} G_t + v_t k_t^T and y_t = S_t r_t, the adjoint D_t = dL/dS_t obeys

    D_t = dS_T [t = T] + dy_t r_t^T + D_{t+1} G_{t+1}^T          (D_{t+1} G^T = D diag(w) + (D b) a^T)

and the per-token gradients are

    dr_t = S_t^T dy_t        dv_t = D_t k_t         dk_t = D_t^T v_t
    da_t = S_{t-1}^T (D_t b_t)    db_t = D_t^T (S_{t-1} a_t)    dlogw_t = w_t * colsum(S_{t-1} o D_t)

ending with ds0 = D_0 = D_1 G_1^T. One program owns rows [i_v*BV, (i_v+1)*BV) of the state of one
(sequence, head), exactly as in the forward. It walks the chunks backwards: restart from the forward checkpoint,
replay the chunk writing S_{t-1} to a per-program scratch slab (global memory, L1/L2 resident), then walk the
chunk backwards reading them. dv and ds0 are complete per row block; dr, dk, da, db and dlogw are sums over all
value rows, so each value block writes a partial sum and the host adds the NV partials.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_helpers import load_state, load_token, seq_bounds, state_block, wkv_step
from .plan import FP_FUSION, WKVPlan, backward_buffers, check_runnable, sum_partials


@triton.jit(do_not_specialize=["T", "TOTAL_T"])
def _wkv7_bwd_kernel(r, logw, k, v, a, b, ckpt, dy, dsT, ds0, dr, dlogw, dk, dv, da, db, scratch,
                     cu_seqlens, chunk_offsets, T, TOTAL_T,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     NV: tl.constexpr, CHUNK: tl.constexpr, HAS_DY: tl.constexpr, HAS_DST: tl.constexpr,
                     IS_VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)

    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    o_tile = tl.arange(0, BV)[:, None] * BK + o_k[None, :]   # offsets inside one scratch tile
    slab = scratch + (i_nh.to(tl.int64) * NV + i_v) * (CHUNK * BV * BK)
    part = i_v.to(tl.int64) * TOTAL_T * H * K                 # this block's slice of the partial-sum buffers

    D = load_state(dsT, i_nh, o_s, m_s, HAS_DST, V, K, BV, BK)

    n_chunks = (eos - bos + CHUNK - 1) // CHUNK
    for j in range(0, n_chunks):
        i_c = n_chunks - 1 - j
        t0 = bos + i_c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, eos)
        # Replay the chunk from its checkpoint, keeping S_{t-1} of every token.
        S = tl.load(ckpt + ((c0 + i_c) * H + i_h) * V * K + o_s, mask=m_s, other=0.)
        for t in range(t0, t1):
            tl.store(slab + (t - t0) * BV * BK + o_tile, S)
            p_k = (t * H + i_h) * K + o_k
            w_t = tl.exp(tl.load(logw + p_k, mask=m_k, other=0.).to(tl.float32))
            k_t = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
            a_t = tl.load(a + p_k, mask=m_k, other=0.).to(tl.float32)
            b_t = tl.load(b + p_k, mask=m_k, other=0.).to(tl.float32)
            v_t = tl.load(v + (t * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
            S, _ = wkv_step(S, w_t, k_t, a_t, b_t, v_t)
        tl.debug_barrier()
        # Walk the chunk backwards.
        for jj in range(0, t1 - t0):
            t = t1 - 1 - jj
            p_k = (t * H + i_h) * K + o_k
            p_v = (t * H + i_h) * V + o_v
            r_t, w_t, k_t, a_t, b_t, v_t = load_token(r, logw, k, v, a, b, p_k, p_v, m_k, m_v)
            S_prev = tl.load(slab + (t - t0) * BV * BK + o_tile)
            S_t, sa = wkv_step(S_prev, w_t, k_t, a_t, b_t, v_t)

            if HAS_DY:
                dy_t = tl.load(dy + p_v, mask=m_v, other=0.).to(tl.float32)
                D += dy_t[:, None] * r_t[None, :]
                dr_t = tl.sum(S_t * dy_t[:, None], axis=0)
            else:
                dr_t = tl.zeros([BK], dtype=tl.float32)
            db_vec = tl.sum(D * b_t[None, :], axis=1)           # D_t b_t     [BV]
            dv_t = tl.sum(D * k_t[None, :], axis=1)
            dk_t = tl.sum(D * v_t[:, None], axis=0)
            db_t = tl.sum(D * sa[:, None], axis=0)
            da_t = tl.sum(S_prev * db_vec[:, None], axis=0)
            dw_t = tl.sum(S_prev * D, axis=0) * w_t

            tl.store(dv + p_v, dv_t.to(dv.dtype.element_ty), mask=m_v)
            tl.store(dr + part + p_k, dr_t, mask=m_k)
            tl.store(dk + part + p_k, dk_t, mask=m_k)
            tl.store(da + part + p_k, da_t, mask=m_k)
            tl.store(db + part + p_k, db_t, mask=m_k)
            tl.store(dlogw + part + p_k, dw_t, mask=m_k)
            D = D * w_t[None, :] + db_vec[:, None] * a_t[None, :]
        tl.debug_barrier()                                      # the next chunk reuses the scratch slab

    tl.store(ds0 + i_nh.to(tl.int64) * V * K + o_s, D, mask=m_s)


def wkv7_bwd(plan: WKVPlan, r, logw, k, v, a, b, ckpt: torch.Tensor, dy: torch.Tensor | None,
             dsT: torch.Tensor | None):
    """Launch the backward kernel. Returns float32 (dr, dlogw, dk, da, db) [total_T, H, K], dv like v, ds0."""
    check_runnable(_wkv7_bwd_kernel, r.device)
    H, K, V, NV = plan.H, plan.K, plan.V, plan.NV
    partial, dv, ds0 = backward_buffers(plan, r.device)
    scratch = torch.empty(plan.N * H * NV * plan.chunk * plan.BV * plan.BK, device=r.device, dtype=torch.float32)
    dr, dlogw, dk, da, db = partial
    grid = (NV, plan.N * H)
    _wkv7_bwd_kernel[grid](
        r, logw, k, v, a, b, ckpt, dy, dsT, ds0, dr, dlogw, dk, dv, da, db, scratch,
        plan.cu_seqlens, plan.chunk_offsets, plan.T, plan.total_T,
        H=H, K=K, V=V, BK=plan.BK, BV=plan.BV, NV=NV, CHUNK=plan.chunk, HAS_DY=dy is not None,
        HAS_DST=dsT is not None, IS_VARLEN=plan.is_varlen, num_warps=plan.num_warps, enable_fp_fusion=FP_FUSION,
    )
    return (*sum_partials(partial), dv, ds0)

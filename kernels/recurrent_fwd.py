"""Recurrent forward Triton kernel of WKV-7 (state in registers, loop over tokens; the oracle for the chunked one).

Each state row (value index) evolves independently:  S[i] <- S[i] (diag(w_t) + a_t b_t^T) + v_t[i] k_t^T,
so one program owns a [BV, K] block of rows of one (sequence, head) and walks its tokens in order. With
``STORE_CKPT`` it writes the state at the start of every ``CHUNK`` tokens; the backward kernel restarts from
those checkpoints (memory O(T / CHUNK * V * K) per head instead of O(T * V * K)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_helpers import load_state, load_token, seq_bounds, state_block, wkv_step
from .plan import FP_FUSION, WKVPlan, check_runnable, forward_buffers


@triton.jit(do_not_specialize=["T"])
def _wkv7_fwd_kernel(r, logw, k, v, a, b, s0, y, sT, ckpt, cu_seqlens, chunk_offsets, T,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     CHUNK: tl.constexpr, HAS_S0: tl.constexpr, STORE_CKPT: tl.constexpr,
                     IS_VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK, IS_VARLEN)

    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)

    state_base = i_nh.to(tl.int64) * V * K
    S = load_state(s0, i_nh, o_s, m_s, HAS_S0, V, K, BV, BK)

    for t in range(bos, eos):
        if STORE_CKPT:
            if (t - bos) % CHUNK == 0:
                i_c = c0 + (t - bos) // CHUNK
                tl.store(ckpt + (i_c * H + i_h) * V * K + o_s, S, mask=m_s)
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        r_t, w_t, k_t, a_t, b_t, v_t = load_token(r, logw, k, v, a, b, p_k, p_v, m_k, m_v)
        S, _ = wkv_step(S, w_t, k_t, a_t, b_t, v_t)
        y_t = tl.sum(S * r_t[None, :], axis=1)                 # S_t r_t                [BV]
        tl.store(y + p_v, y_t.to(y.dtype.element_ty), mask=m_v)

    tl.store(sT + state_base + o_s, S, mask=m_s)


def wkv7_fwd(plan: WKVPlan, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             a: torch.Tensor, b: torch.Tensor, s0: torch.Tensor | None, store_checkpoints: bool):
    """Launch the forward kernel on contiguous inputs. Returns (y in r's dtype, sT float32, checkpoints or None)."""
    check_runnable(_wkv7_fwd_kernel, r.device)
    H, K, V = plan.H, plan.K, plan.V
    y, sT, ckpt = forward_buffers(plan, r, v, store_checkpoints)
    grid = (plan.NV, plan.N * H)
    _wkv7_fwd_kernel[grid](
        r, logw, k, v, a, b, s0, y, sT, ckpt, plan.cu_seqlens, plan.chunk_offsets, plan.T,
        H=H, K=K, V=V, BK=plan.BK, BV=plan.BV, CHUNK=plan.chunk, HAS_S0=s0 is not None,
        STORE_CKPT=store_checkpoints, IS_VARLEN=plan.is_varlen, num_warps=plan.num_warps, enable_fp_fusion=FP_FUSION,
    )
    return y, sT, ckpt

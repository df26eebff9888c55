"""One-token WKV-7 step for generation: S <- S (diag(w) + a b^T) + v k^T, y = S r (no autograd)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_helpers import load_token, state_block, wkv_step
from .plan import FP_FUSION, check_runnable


@triton.jit
def _wkv7_decode_kernel(r, logw, k, v, a, b, s_in, s_out, y, H: tl.constexpr, K: tl.constexpr,
                        V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v, m_s, o_s = state_block(i_v, K, V, BK, BV)
    p_s = i_bh.to(tl.int64) * V * K + o_s
    p_k = i_bh.to(tl.int64) * K + o_k
    p_v = i_bh.to(tl.int64) * V + o_v

    S = tl.load(s_in + p_s, mask=m_s, other=0.).to(tl.float32)
    r_t, w_t, k_t, a_t, b_t, v_t = load_token(r, logw, k, v, a, b, p_k, p_v, m_k, m_v)
    S, _ = wkv_step(S, w_t, k_t, a_t, b_t, v_t)
    tl.store(y + p_v, tl.sum(S * r_t[None, :], axis=1).to(y.dtype.element_ty), mask=m_v)
    tl.store(s_out + p_s, S.to(s_out.dtype.element_ty), mask=m_s)


def wkv7_triton_decode(r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                       b: torch.Tensor, state: torch.Tensor | None = None, *, inplace: bool = False):
    """Advance the recurrence by one token per (batch row, head).

    Args:
        r, logw, k, a, b: [B, H, K] or [B, 1, H, K]; v: [B, H, V] or [B, 1, H, V].
        state: [B, H, V, K] (zeros when None); float32 recommended.
        inplace: overwrite ``state`` instead of allocating a new one (saves a copy per step).

    Returns:
        (y with v's leading shape and r's dtype, new state with ``state``'s dtype; float32 when state is None).
    """
    with_time = r.dim() == 4
    if with_time:
        if r.shape[1] != 1:
            raise ValueError(f"wkv7_triton_decode: expects one token, got r of shape {tuple(r.shape)}; "
                             "use wkv7_triton for sequences")
        r, logw, k, v, a, b = (x.squeeze(1) for x in (r, logw, k, v, a, b))
    if r.dim() != 3:
        raise ValueError(f"wkv7_triton_decode: r must be [B, H, K] or [B, 1, H, K], got {tuple(r.shape)}")
    for name, x in (("logw", logw), ("k", k), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"wkv7_triton_decode: {name} has shape {tuple(x.shape)}, expected {tuple(r.shape)}")
    Bsz, H, K = r.shape
    if v.dim() != 3 or v.shape[:2] != (Bsz, H):
        raise ValueError(f"wkv7_triton_decode: v has shape {tuple(v.shape)}, expected [B, H, V] with "
                         f"B, H = {Bsz, H}")
    V = v.shape[-1]
    if state is None:
        if inplace:
            raise ValueError("wkv7_triton_decode: inplace=True needs a state tensor")
        state = torch.zeros(Bsz, H, V, K, device=r.device, dtype=torch.float32)
    elif tuple(state.shape) != (Bsz, H, V, K):
        raise ValueError(f"wkv7_triton_decode: state has shape {tuple(state.shape)}, expected {(Bsz, H, V, K)}")
    if inplace and not state.is_contiguous():
        raise ValueError("wkv7_triton_decode: inplace=True needs a contiguous state")
    check_runnable(_wkv7_decode_kernel, r.device)

    r, logw, k, v, a, b = (x.contiguous() for x in (r, logw, k, v, a, b))
    s_in = state.contiguous()
    s_out = s_in if inplace else torch.empty_like(s_in)
    y = torch.empty(Bsz, H, V, device=r.device, dtype=r.dtype)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(max(16, triton.next_power_of_2(V)), max(16, 4096 // BK))
    grid = (triton.cdiv(V, BV), Bsz * H)
    _wkv7_decode_kernel[grid](r, logw, k, v, a, b, s_in, s_out, y, H=H, K=K, V=V, BK=BK, BV=BV,
                              num_warps=4 if BV * BK <= 2048 else 8,
                              enable_fp_fusion=FP_FUSION)
    return (y.unsqueeze(1) if with_time else y), s_out

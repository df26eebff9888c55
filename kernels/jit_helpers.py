"""@triton.jit helpers shared by the WKV-7 kernels: sequence bounds, state blocks, one token's loads, one step."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def seq_bounds(cu_seqlens, chunk_offsets, i_n, T, CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Token range [bos, eos) and first checkpoint index of sequence ``i_n`` (int64)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
        c0 = i_n.to(tl.int64) * ((T + CHUNK - 1) // CHUNK)   # no tl.cdiv (interpreter, docs/kernels.md)
    return bos, eos, c0


@triton.jit
def load_token(r, logw, k, v, a, b, p_k, p_v, m_k, m_v):
    """One token's inputs in float32: (r, w = exp(logw), k, a, b) at key offsets ``p_k``, v at ``p_v``."""
    r_t = tl.load(r + p_k, mask=m_k, other=0.).to(tl.float32)
    w_t = tl.exp(tl.load(logw + p_k, mask=m_k, other=0.).to(tl.float32))
    k_t = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
    a_t = tl.load(a + p_k, mask=m_k, other=0.).to(tl.float32)
    b_t = tl.load(b + p_k, mask=m_k, other=0.).to(tl.float32)
    v_t = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
    return r_t, w_t, k_t, a_t, b_t, v_t


@triton.jit
def wkv_step(S, w_t, k_t, a_t, b_t, v_t):
    """S_{t-1} -> S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, and S_{t-1} a_t (the backward needs it)."""
    sa = tl.sum(S * a_t[None, :], axis=1)
    return S * w_t[None, :] + sa[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :], sa


@triton.jit
def state_block(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Key offsets, this program's value rows, their masks, and the offsets of its [BV, BK] block in a [V, K] state."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    return o_k, o_v, m_k, m_v, m_v[:, None] & m_k[None, :], o_v[:, None] * K + o_k[None, :]


@triton.jit
def load_state(ptr, i_nh, o_s, m_s, PRESENT: tl.constexpr, V: tl.constexpr, K: tl.constexpr, BV: tl.constexpr,
               BK: tl.constexpr):
    """This program's [BV, BK] block of state ``i_nh`` of a [N * H, V, K] buffer in float32 (zeros if absent)."""
    if PRESENT:
        block = tl.load(ptr + i_nh.to(tl.int64) * V * K + o_s, mask=m_s, other=0.).to(tl.float32)
    else:
        block = tl.zeros([BV, BK], dtype=tl.float32)
    return block

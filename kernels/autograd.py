"""`wkv7_triton`: the differentiable WKV-7 recurrence on Triton kernels (forward + backward incl. ds0)."""

from __future__ import annotations

import torch

from .chunk_bwd import wkv7_chunk_bwd
from .chunk_fwd import wkv7_chunk_fwd
from .plan import DEFAULT_CHUNK, WKVPlan, make_plan
from .recurrent_bwd import wkv7_bwd
from .recurrent_fwd import wkv7_fwd

KERNELS = {"chunk": (wkv7_chunk_fwd, wkv7_chunk_bwd), "recurrent": (wkv7_fwd, wkv7_bwd)}


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] -> contiguous [B*T, H, D] (a view when already contiguous)."""
    return x.contiguous().view(-1, x.shape[2], x.shape[3])


class WKV7Function(torch.autograd.Function):
    """Autograd wrapper. Saves the inputs and one state checkpoint per chunk; the backward replays chunks."""

    @staticmethod
    def forward(ctx, r, logw, k, v, a, b, s0, plan: WKVPlan):
        shape_y = v.shape
        xs = [_flat(x) for x in (r, logw, k, v, a, b)]
        s0c = s0.contiguous() if s0 is not None else None
        needs_grad = any(ctx.needs_input_grad[:7])
        fwd, _ = KERNELS[plan.algorithm]
        y, sT, ckpt = fwd(plan, *xs, s0c, store_checkpoints=needs_grad)
        if needs_grad:
            ctx.save_for_backward(*xs, ckpt)
            ctx.plan = plan
            ctx.dtypes = [x.dtype for x in (r, logw, k, v, a, b)]
            ctx.shapes = [x.shape for x in (r, logw, k, v, a, b)]
            ctx.s0_dtype = s0.dtype if s0 is not None else None
        ctx.set_materialize_grads(False)
        return y.view(shape_y), sT

    @staticmethod
    def backward(ctx, dy, dsT):
        *xs, ckpt = ctx.saved_tensors
        plan = ctx.plan
        dy = _flat(dy) if dy is not None else None
        dsT = dsT.contiguous() if dsT is not None else None
        _, bwd = KERNELS[plan.algorithm]
        dr, dlogw, dk, da, db, dv, ds0 = bwd(plan, *xs, ckpt, dy, dsT)
        grads = [g.view(shape).to(dtype) for g, shape, dtype in
                 zip((dr, dlogw, dk, dv, da, db), ctx.shapes, ctx.dtypes)]
        ds0 = ds0.to(ctx.s0_dtype) if ctx.s0_dtype is not None else None
        return (*grads, ds0, None)


def wkv7_triton(r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, s0: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None, *,
                chunk_size: int = DEFAULT_CHUNK, block_v: int | None = None, algorithm: str = "chunk"):
    """WKV-7 recurrence S_t = S_{t-1}(diag(exp(logw_t)) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t on Triton.

    Args:
        r, logw, k, a, b: [B, T, H, K]; ``logw`` is the log decay (<= 0). float32, bfloat16 or float16.
        v: [B, T, H, V] (V may differ from K).
        s0: optional initial state [N, H, V, K] (row = value index); gradients flow to it.
        cu_seqlens: optional int offsets [N + 1] for packed variable-length input (then B must be 1 and
            N = len(cu_seqlens) - 1; otherwise N = B).
        chunk_size: tokens per chunk (16, 32 or 64 for the chunk algorithm); the state is checkpointed once
            per chunk for the backward pass.
        block_v: value rows per program (power of two); default picks one from the shapes.
        algorithm: "chunk" (default; per-chunk matrix form on tl.dot, ``chunk_fwd.py`` / ``chunk_bwd.py``) or
            "recurrent" (token loop, ``recurrent_fwd.py`` / ``recurrent_bwd.py``; the reference the chunked
            kernels are tested against).

    Returns:
        y [B, T, H, V] in r's dtype and the final state [N, H, V, K] in float32. All math runs in float32.
    """
    plan = make_plan(r, logw, k, v, a, b, s0, cu_seqlens, chunk_size, block_v, algorithm)
    return WKV7Function.apply(r, logw, k, v, a, b, s0, plan)

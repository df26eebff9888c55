"""Optional backend: fla's ``chunk_rwkv7`` (flash-linear-attention, CUDA only) in this project's layout.

fla keeps the state as [N, H, K, V] (the transpose of ours) and scales r by ``scale``; RWKV-7 needs scale 1.
The decay argument is the log decay, as here. Gradients (including to the initial state) come from fla's own
backward; the transposes below are differentiable views.
"""

from __future__ import annotations

import inspect

import torch


def _load_chunk_rwkv7():
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as e:
        raise ImportError("wkv7_fla needs flash-linear-attention (pip install flash-linear-attention) and a CUDA "
                          "GPU; use backend='triton' or 'torch' otherwise") from e
    return chunk_rwkv7


def wkv7_fla(r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
             b: torch.Tensor, s0: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None):
    """Same contract as ``wkv7_triton``: returns (y [B,T,H,V], final state [N,H,V,K] float32)."""
    chunk_rwkv7 = _load_chunk_rwkv7()
    if not r.is_cuda:
        raise RuntimeError(f"wkv7_fla: fla's Triton kernels run only on CUDA tensors, got device {r.device}; "
                           "use backend='torch' (CPU) instead")
    return call_chunk_rwkv7(chunk_rwkv7, r, logw, k, v, a, b, s0, cu_seqlens)


def call_chunk_rwkv7(chunk_rwkv7, r, logw, k, v, a, b, s0=None, cu_seqlens=None):
    """Translate to fla's conventions (state [N,H,K,V], scale 1, int64 offsets), call, and translate back."""
    params = inspect.signature(chunk_rwkv7).parameters
    if "w" not in params:
        raise RuntimeError("wkv7_fla: this fla version's chunk_rwkv7 has no log-decay argument 'w' "
                           f"(signature {tuple(params)}); use flash-linear-attention >= 0.2")
    h0 = s0.transpose(-1, -2).float().contiguous() if s0 is not None else None
    kwargs = dict(r=r, w=logw, k=k, v=v, a=a, b=b, scale=1.0, initial_state=h0, output_final_state=True)
    if cu_seqlens is not None:
        kwargs["cu_seqlens"] = cu_seqlens.long()
    if "head_first" in params:
        kwargs["head_first"] = False
    y, hT = chunk_rwkv7(**kwargs)
    return y, hT.transpose(-1, -2).float()

"""Input validation and launch geometry shared by the WKV-7 Triton kernels.

Every kernel sees the inputs flattened to ``[total_T, H, *]`` (contiguous) plus, per sequence ``n``, its token
range ``[bos_n, eos_n)``. Fixed-length batches use ``bos_n = n * T``; packed variable-length batches pass
``cu_seqlens`` (``[N + 1]`` int offsets into the packed ``[1, total_T, H, *]`` tensors, as in fla / flash-attn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

DEFAULT_CHUNK = 16            # tokens per chunk = between state checkpoints (forward) = recompute window (backward)
ALGORITHMS = ("chunk", "recurrent")
_MAX_TILE = 4096              # BV * BK elements of state held in registers per program (recurrent kernels)
_MAX_TILE_CHUNK = 2048        # chunk kernels also hold ~a dozen [C, BK] tiles: at K = 64, BV = 32 and 8 warps no
                              # sm_90 chunk kernel spills, at BV = 64 the gradient kernel does (kernel_resources.py)
_TARGET_PROGRAMS = 256        # shrink BV until the grid has about this many programs (GPU occupancy)
FP_FUSION = True              # let the compiler fuse a * b + c into FMAs. Passed at every launch: Triton 3.9 warns when
                              # it is left unset and 3.10 changes its default to off (slower, different rounding)


@dataclass(frozen=True)
class WKVPlan:
    """Shapes, block sizes and per-sequence offsets of one WKV-7 launch."""

    N: int                    # number of sequences
    T: int                    # per-sequence length (fixed-length case; 0 when varlen)
    total_T: int              # tokens in the flattened input
    H: int
    K: int
    V: int
    BK: int
    BV: int
    NV: int                   # value blocks = grid size along V
    chunk: int
    algorithm: str            # "chunk" (matrix form per chunk) or "recurrent" (token loop)
    dot_precision: str        # tl.dot input_precision: "ieee" for float32 inputs, "tf32" for 16-bit ones
    n_chunks: int             # checkpoints in total over all sequences
    cu_seqlens: torch.Tensor | None      # int64 [N + 1] on the input device, varlen only
    chunk_offsets: torch.Tensor | None   # int64 [N] first checkpoint index of each sequence, varlen only
    chunk_index: torch.Tensor | None = None   # int64 [n_chunks, 2] (sequence, chunk within it): varlen chunk kernels

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_warps(self) -> int:
        if self.algorithm == "chunk":
            return 8
        return 4 if self.BV * self.BK <= 2048 else 8


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def make_plan(r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
              b: torch.Tensor, s0: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
              chunk_size: int = DEFAULT_CHUNK, block_v: int | None = None, algorithm: str = "chunk") -> WKVPlan:
    """Check shapes, dtypes and devices; choose block sizes. Raises ValueError with the offending shape."""
    if r.dim() != 4:
        raise ValueError(f"wkv7_triton: r must be [B, T, H, K], got shape {tuple(r.shape)}")
    for name, x in (("logw", logw), ("k", k), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"wkv7_triton: {name} has shape {tuple(x.shape)}, expected r's {tuple(r.shape)}")
    if v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise ValueError(f"wkv7_triton: v has shape {tuple(v.shape)}, expected [B, T, H, V] with "
                         f"B, T, H = {tuple(r.shape[:3])}")
    tensors = [r, logw, k, v, a, b] + ([s0] if s0 is not None else [])
    if len({x.device for x in tensors}) != 1:
        raise ValueError("wkv7_triton: all inputs (and s0) must be on the same device")
    for x in tensors:
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"wkv7_triton: unsupported dtype {x.dtype}; use float32, bfloat16 or float16 "
                             "(float64 references live in rl_statetune.wkv.wkv7_naive)")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"wkv7_triton: unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    if chunk_size < 1:
        raise ValueError(f"wkv7_triton: chunk_size must be >= 1, got {chunk_size}")
    if algorithm == "chunk" and (chunk_size < 16 or chunk_size & (chunk_size - 1) or chunk_size > 64):
        raise ValueError(f"wkv7_triton: the chunk algorithm needs chunk_size in {{16, 32, 64}} (tl.dot tiles; "
                         f"e^(chunk * max|logw|) must fit float32), got {chunk_size}; the recurrent one takes any")
    B, T, H, K = r.shape
    V = v.shape[-1]
    if K == 0 or V == 0 or H == 0:
        raise ValueError(f"wkv7_triton: empty head dimensions H={H}, K={K}, V={V}")

    if cu_seqlens is None:
        N, seq_T, total_T = B, T, B * T
        n_chunks = B * triton.cdiv(T, chunk_size)
        cu, offs = None, None
    else:
        if B != 1:
            raise ValueError(f"wkv7_triton: with cu_seqlens the inputs must be packed as [1, total_T, H, K], "
                             f"got batch size {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("wkv7_triton: cu_seqlens must be a 1-D int32/int64 tensor [N + 1] of offsets")
        host = cu_seqlens.detach().to("cpu", torch.int64)
        lens = host[1:] - host[:-1]
        if host[0] != 0 or host[-1] != T or bool((lens < 0).any()):
            raise ValueError(f"wkv7_triton: cu_seqlens must rise from 0 to total_T={T}, got {host.tolist()}")
        N, seq_T, total_T = lens.numel(), 0, T
        per_seq = (lens + chunk_size - 1) // chunk_size
        n_chunks = int(per_seq.sum())
        cu = host.to(r.device)
        offs = (torch.cumsum(per_seq, 0) - per_seq).to(r.device)

    if s0 is not None and tuple(s0.shape) != (N, H, V, K):
        raise ValueError(f"wkv7_triton: s0 has shape {tuple(s0.shape)}, expected [N, H, V, K] = {(N, H, V, K)}")

    BK = max(16, _pow2(K))
    if block_v is None:
        max_tile = _MAX_TILE_CHUNK if algorithm == "chunk" else _MAX_TILE
        BV = min(max(16, _pow2(V)), max(16, max_tile // BK))
        while BV > 16 and N * H * triton.cdiv(V, BV) < _TARGET_PROGRAMS:
            BV //= 2
    else:
        if block_v < 1 or block_v & (block_v - 1):
            raise ValueError(f"wkv7_triton: block_v must be a power of two, got {block_v}")
        BV = block_v
    precision = "ieee" if all(x.dtype == torch.float32 for x in (r, logw, k, v, a, b)) else "tf32"
    index = _chunk_index(per_seq).to(r.device) if algorithm == "chunk" and cu is not None else None
    return WKVPlan(N=N, T=seq_T, total_T=total_T, H=H, K=K, V=V, BK=BK, BV=BV, NV=triton.cdiv(V, BV),
                   chunk=chunk_size, algorithm=algorithm, dot_precision=precision, n_chunks=n_chunks,
                   cu_seqlens=cu, chunk_offsets=offs, chunk_index=index)


def _chunk_index(per_seq: torch.Tensor) -> torch.Tensor:
    """[n_chunks, 2]: for every chunk in sequence order, its sequence and its index within that sequence."""
    seq = torch.repeat_interleave(torch.arange(per_seq.numel()), per_seq)
    first = torch.cumsum(per_seq, 0) - per_seq
    return torch.stack([seq, torch.arange(seq.numel()) - first[seq]], dim=1).contiguous()


def check_runnable(kernel, device: torch.device) -> None:
    """Fail clearly when a kernel would be launched on CPU tensors without the Triton interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(kernel, InterpretedFunction)
    if device.type == "cpu" and not interpreted:
        raise RuntimeError("wkv7_triton: inputs are on the CPU but Triton is not in interpreter mode. Use CUDA "
                           "tensors, or set TRITON_INTERPRET=1 before the first import of triton / "
                           "rl_statetune_kernels (slow; meant for tests), or use rl_statetune.wkv.wkv7_chunked.")


def forward_buffers(plan: WKVPlan, r: torch.Tensor, v: torch.Tensor, store_checkpoints: bool):
    """Outputs of a forward launch: y (r's dtype, v's shape), sT [N, H, V, K] fp32, and the chunk checkpoints."""
    y = torch.empty(v.shape, device=v.device, dtype=r.dtype)
    sT = torch.empty(plan.N, plan.H, plan.V, plan.K, device=r.device, dtype=torch.float32)
    ckpt = (torch.empty(max(plan.n_chunks, 1), plan.H, plan.V, plan.K, device=r.device, dtype=torch.float32)
            if store_checkpoints else None)
    return y, sT, ckpt


def backward_buffers(plan: WKVPlan, device: torch.device):
    """Outputs of a backward launch: per-value-block partials of (dr, dlogw, dk, da, db), then dv and ds0 (fp32)."""
    partial = [torch.empty(plan.NV, plan.total_T, plan.H, plan.K, device=device, dtype=torch.float32)
               for _ in range(5)]
    dv = torch.empty(plan.total_T, plan.H, plan.V, device=device, dtype=torch.float32)
    ds0 = torch.empty(plan.N, plan.H, plan.V, plan.K, device=device, dtype=torch.float32)
    return partial, dv, ds0


def sum_partials(partial: list[torch.Tensor]) -> list[torch.Tensor]:
    """Add up the value blocks' partial sums of the key-sized gradients."""
    return [x.sum(0) if x.shape[0] > 1 else x[0] for x in partial]

"""Triton kernels for the WKV-7 recurrence (imported as ``rl_statetune_kernels``).

- ``wkv7_triton``: differentiable sequence kernel (fixed or variable lengths), gradients to every input and s0;
  chunked matrix form by default (``chunk_fwd.py``/``chunk_bwd.py``), token loop with ``algorithm="recurrent"``.
- ``wkv7_triton_decode``: one-token step for generation.
- ``wkv7_fla``: optional adapter to flash-linear-attention's ``chunk_rwkv7`` (CUDA only).

On CPU the Triton kernels run only under ``TRITON_INTERPRET=1`` set before triton is first imported (tests).
"""

from .autograd import wkv7_triton
from .fla_backend import wkv7_fla
from .wkv7_decode import wkv7_triton_decode

__all__ = ["wkv7_triton", "wkv7_triton_decode", "wkv7_fla"]

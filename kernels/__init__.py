"""Triton kernels for the WKV-7 recurrence (imported as ``rl_statetune_kernels``).

- ``wkv7_triton``: differentiable sequence kernel (fixed or variable lengths), gradients to every input and s0;
  chunked matrix form by default (``chunk_fwd.py``/``chunk_bwd.py``), token loop with ``algorithm="recurrent"``.
- ``wkv7_triton_decode``: one-token step for generation.
- ``wkv7_fla``: optional adapter to flash-linear-attention's ``chunk_rwkv7`` (CUDA only).

On CPU the Triton kernels run only under ``TRITON_INTERPRET=1`` set before triton is first imported (tests).
"""

import importlib.machinery
import importlib.util
import os
import sys

_real_spec = None
if __name__ == "kernels":
    # Imported by the folder's bare name: from the repository root (``python -m pytest``, ``python -c``) this folder
    # sits on sys.path ahead of site-packages and would hide Hugging Face's ``kernels`` package, which transformers
    # (>= 5.25 requires it) imports. Hand the name over to the installed package where there is one.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _real_spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root])
if _real_spec is not None:
    _real = importlib.util.module_from_spec(_real_spec)
    sys.modules["kernels"] = _real
    _real_spec.loader.exec_module(_real)
else:
    from .autograd import wkv7_triton
    from .fla_backend import wkv7_fla
    from .wkv7_decode import wkv7_triton_decode

    __all__ = ["wkv7_triton", "wkv7_triton_decode", "wkv7_fla"]

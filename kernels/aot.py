"""Compile the WKV-7 kernels for a CUDA target on a machine without a GPU, and read their static resource use.

Runs Triton's whole pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for e.g. sm_90, then asks ptxas for
registers and spills; shared memory comes from Triton's metadata. The kernels must be imported *compiled*
(TRITON_INTERPRET unset before triton is first imported), so tests call this in a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .chunk_bwd import _chunk_adjoint_kernel, _chunk_grads_kernel
from .chunk_fwd import _chunk_local_kernel, _chunk_output_kernel, _chunk_states_kernel
from .plan import FP_FUSION
from .recurrent_bwd import _wkv7_bwd_kernel
from .recurrent_fwd import _wkv7_fwd_kernel
from .wkv7_decode import _wkv7_decode_kernel

KERNELS = {
    "chunk": {"local": _chunk_local_kernel, "states": _chunk_states_kernel, "output": _chunk_output_kernel,
              "adjoint": _chunk_adjoint_kernel, "grads": _chunk_grads_kernel},
    "recurrent": {"fwd": _wkv7_fwd_kernel, "bwd": _wkv7_bwd_kernel},
    "decode": {"step": _wkv7_decode_kernel},
}
INPUTS = {"r", "logw", "k", "v", "a", "b", "y", "dy"}   # typed as the input dtype; other buffers are fp32
INDICES = {"chunk_index", "cu_seqlens", "chunk_offsets"}
SCALARS = {"T", "TOTAL_T"}


def find_ptxas() -> str:
    """A ptxas new enough for the PTX Triton emits (Triton ships one; the Blackwell build reads the newest PTX)."""
    nv = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):
        if (nv / name).exists():
            return str(nv / name)
    return "ptxas"


def compile_kernel(fn, consts: dict, num_warps: int, arch: int, dtype: str) -> tuple[int | None, int | None, int]:
    """(registers, spill bytes, shared memory bytes) of ``fn`` specialised on the constexprs it takes from
    ``consts``; its other arguments are typed by name (INPUTS, INDICES, SCALARS, else fp32 pointers)."""
    sig, constexprs = {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
            constexprs[(i,)] = consts[name]
        elif name in SCALARS:
            sig[name] = "i64"
        else:
            sig[name] = f"*{dtype}" if name in INPUTS else "*i64" if name in INDICES else "*fp32"
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    options = {"num_warps": num_warps, "enable_fp_fusion": FP_FUSION}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        cmd = [find_ptxas(), "-v", f"--gpu-name=sm_{arch}{suffix}", str(ptx), "-o", str(Path(d) / "k.o")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    info = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores", info)
    return (int(regs.group(1)) if regs else None, int(spill.group(1)) if spill else None, compiled.metadata.shared)


def kernel_resources(algorithm: str, K: int, V: int, chunk: int, BV: int, num_warps: int, arch: int = 90,
                     dtype: str = "bf16", **flags: bool) -> dict[str, tuple[int | None, int | None, int]]:
    """Resources (registers, spill bytes, shared memory bytes) of every kernel of ``algorithm`` for one launch
    configuration: by default a fixed-length batch with an initial state and both output gradients; ``flags``
    overrides the kernels' boolean constexprs (IS_VARLEN, HAS_S0, STORE_CKPT, HAS_DY, HAS_DST, WITH_VALUES)."""
    consts = dict(H=8, K=K, V=V, BK=max(16, triton.next_power_of_2(K)), BV=BV, NV=triton.cdiv(V, BV),
                  BVF=max(16, triton.next_power_of_2(V)), CHUNK=chunk, IS_VARLEN=False, HAS_S0=True,
                  STORE_CKPT=True, HAS_DY=True, HAS_DST=True, WITH_VALUES=True,
                  PREC="ieee" if dtype == "fp32" else "tf32")
    unknown = set(flags) - {name for name, value in consts.items() if isinstance(value, bool)}
    if unknown:
        raise ValueError(f"kernel_resources: unknown flags {sorted(unknown)}")
    consts.update(flags)
    return {name: compile_kernel(fn, consts, num_warps, arch, dtype) for name, fn in KERNELS[algorithm].items()}

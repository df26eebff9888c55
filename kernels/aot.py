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

from .chunk_bwd import _wkv7_chunk_bwd_kernel
from .chunk_fwd import _wkv7_chunk_fwd_kernel
from .recurrent_bwd import _wkv7_bwd_kernel
from .recurrent_fwd import _wkv7_fwd_kernel

FWD_PTRS = "r logw k v a b s0 y sT ckpt cu_seqlens chunk_offsets".split()
CHUNK_BWD_PTRS = "r logw k v a b ckpt dy dsT ds0 dr dlogw dk dv da db cu_seqlens chunk_offsets".split()
REC_BWD_PTRS = CHUNK_BWD_PTRS[:-2] + ["scratch", "cu_seqlens", "chunk_offsets"]
INPUTS = {"r", "logw", "k", "v", "a", "b", "y", "dy"}


def find_ptxas() -> str:
    """A ptxas new enough for the PTX Triton emits (Triton ships one; the Blackwell build reads the newest PTX)."""
    nv = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):
        if (nv / name).exists():
            return str(nv / name)
    return "ptxas"


def compile_kernel(fn, ptrs: list[str], ints: list[str], consts: dict, num_warps: int, arch: int, dtype: str):
    """(registers, spill bytes, shared memory bytes) of one specialisation of ``fn``."""
    sig = {a: f"*{dtype}" if a in INPUTS else "*fp32" for a in ptrs}     # state and gradient buffers: fp32
    sig.update({a: "i64" for a in ints})
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
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
                     dtype: str = "bf16") -> tuple[tuple, tuple]:
    """(fwd, bwd) resources of one launch configuration, each (registers, spill bytes, shared memory bytes)."""
    BK = max(16, triton.next_power_of_2(K))
    base = dict(H=8, K=K, V=V, BK=BK, BV=BV, CHUNK=chunk, IS_VARLEN=False)
    if algorithm == "chunk":
        prec = "ieee" if dtype == "fp32" else "tf32"
        fwd = compile_kernel(_wkv7_chunk_fwd_kernel, FWD_PTRS, ["T"],
                             dict(base, HAS_S0=True, STORE_CKPT=True, PREC=prec), num_warps, arch, dtype)
        bwd = compile_kernel(_wkv7_chunk_bwd_kernel, CHUNK_BWD_PTRS, ["T", "TOTAL_T"],
                             dict(base, HAS_DY=True, HAS_DST=True, PREC=prec), num_warps, arch, dtype)
    else:
        fwd = compile_kernel(_wkv7_fwd_kernel, FWD_PTRS, ["T"], dict(base, HAS_S0=True, STORE_CKPT=True),
                             num_warps, arch, dtype)
        bwd = compile_kernel(_wkv7_bwd_kernel, REC_BWD_PTRS, ["T", "TOTAL_T"],
                             dict(base, NV=triton.cdiv(V, BV), HAS_DY=True, HAS_DST=True), num_warps, arch, dtype)
    return fwd, bwd

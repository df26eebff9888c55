"""Compile the WKV-7 Triton kernels for a CUDA target without a GPU and print their static resource use.

Triton's whole pipeline runs for e.g. sm_90 (H100) on a CPU-only machine (``rl_statetune_kernels.aot``);
ptxas gives registers and spills, Triton's metadata the shared memory. This is what can
be known about the kernels' fit on a GPU before running one: a kernel whose shared memory exceeds the device's
per-block limit (H100 227 KiB, A100 163 KiB) cannot launch, and spills cost bandwidth.

    python benchmarks/kernel_resources.py                       # K = V = 64, sm_90
    python benchmarks/kernel_resources.py --K 128 --arch 80
"""

from __future__ import annotations

import argparse
import os

os.environ.pop("TRITON_INTERPRET", None)     # compile for real, even when the environment asks for the interpreter

from rl_statetune_kernels.aot import find_ptxas, kernel_resources  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=None)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10: 80 (A100), 90 (H100)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="input dtype (state math is fp32)")
    args = p.parse_args(argv)
    K, V = args.K, args.V or args.K
    prec = "ieee" if args.dtype == "fp32" else "tf32"
    print(f"# sm_{args.arch}, K={K} V={V} inputs {args.dtype}, tl.dot precision {prec}; ptxas {find_ptxas()}")
    print("| algorithm | kernel | chunk | BV | warps | registers | spill bytes | shared KiB |")
    print("|---|---|---|---|---|---|---|---|")
    for algo in ("chunk", "recurrent"):
        for C in (16, 32):
            for BV in (32, 64):
                for nw in (4, 8):
                    for name, (regs, spill, smem) in kernel_resources(algo, K, V, C, BV, nw, args.arch,
                                                                      args.dtype).items():
                        print(f"| {algo} | {name} | {C} | {BV} | {nw} | {regs} | {spill} | {smem / 1024:.0f} |",
                              flush=True)

if __name__ == "__main__":
    main()

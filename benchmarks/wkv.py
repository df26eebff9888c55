"""Throughput of the WKV-7 recurrence, forward + backward to the initial state (what state tuning needs).

CPU: the chunked pure-torch path (``wkv7_chunked``) vs the per-token autograd reference (``wkv7_naive``), in
the same run, with their ratio. CUDA: additionally our chunked Triton kernels (``triton``), the token-loop Triton
kernels (``triton-rec``), fla's ``chunk_rwkv7`` (if installed; the target is triton time / fla <= 1.5 at
T = 4096), and peak memory. Throughput counts (head, token) pairs: B * H * T per call. Next to the figures:
FLOPs and the minimal memory traffic of the chunked form (``chunked_cost``).

    python benchmarks/wkv.py --quick            # CPU, small sizes (minutes on 2 cores)
    python benchmarks/wkv.py                    # T in {256, 1024, 4096}, B*H in {8, 64}, K = V = 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from rl_statetune.wkv import DEFAULT_CHUNK, wkv7_chunked, wkv7_naive


def chunked_cost(T: int, BH: int, K: int, V: int, C: int = DEFAULT_CHUNK, elt: int = 4) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward of the chunked form over BH heads of T tokens.

    Per chunk of C tokens and head (multiply-add = 2 FLOPs): the four masked C x C score products 8C^2K, the
    value products L_ak V, M_rb U0, M_rk V 6C^2V, the unit-triangular solve C^2(K+V), Q = r^- + M_rb W 2C^2K,
    P = e^{cs} + W^T B^e 2CK^2, E = U0^T B^e + V^T K^e 4CKV, and the sequential pass (Q S^T, S P) 2CKV + 2VK^2.
    Bytes: the inputs r, logw, k, a, b, v and output y once, plus the state read and written once per head
    (what a fused kernel must move; the torch path moves more through its materialised intermediates).
    The backward costs about twice the forward.
    """
    n = -(-T // C)
    per_chunk = C * C * (11 * K + 7 * V) + 2 * C * K * K + 6 * C * K * V + 2 * V * K * K
    flops = float(BH * n * per_chunk)
    bytes_ = float(BH * (T * (5 * K + 2 * V) * elt + 2 * V * K * 4))
    return flops, bytes_


@dataclass
class Result:
    seconds: float | None
    peak_mib: float | None = None
    note: str = ""


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd_step(fn: Callable, inputs: list[torch.Tensor], s0: torch.Tensor, all_grads: bool) -> Callable:
    """One forward + backward of <y, 1> + <sT, 1> w.r.t. s0 (and every input if all_grads)."""
    def step():
        s = s0.detach().requires_grad_()
        xs = [x.detach().requires_grad_(all_grads) for x in inputs]
        y, sT = fn(*xs, s)
        (y.float().sum() + sT.sum()).backward()
        return s.grad
    return step


def time_interleaved(steps: dict[str, Callable], device: str, repeats: int, stat: str) -> dict[str, Result]:
    """Wall time of each step, the back ends taking turns within every repeat (A B A B ...) so that a noisy
    host slows them alike; `stat` (median or min) over the repeats. On CUDA also the peak memory of one step."""
    peaks: dict[str, float | None] = {}
    for name, step in steps.items():
        step()                                         # warm-up (Triton compile, allocator)
        peaks[name] = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    reduce = statistics.median if stat == "median" else min
    return {name: Result(reduce(ts), peaks[name]) for name, ts in times.items()}


def make_inputs(B: int, T: int, H: int, K: int, V: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g)                              # noqa: E731
    kk = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    xs = [rnd(B, T, H, K), -0.606531 * torch.sigmoid(rnd(B, T, H, K)), rnd(B, T, H, K) / K ** 0.5,
          rnd(B, T, H, V), -kk, kk * torch.sigmoid(rnd(B, T, H, K))]
    return [x.to(device, dtype) for x in xs], (0.1 * rnd(B, H, V, K)).to(device)


def backends(device: str, chunk: int, triton_chunk: int | None = None, block_v: int | None = None
             ) -> dict[str, Callable]:
    fns: dict[str, Callable] = {
        "chunked": lambda r, w, k, v, a, b, s: wkv7_chunked(r, w, k, v, a, b, s, chunk_size=chunk),
        "naive": wkv7_naive,
    }
    if device == "cuda":
        from rl_statetune_kernels import wkv7_fla, wkv7_triton
        tune = {"block_v": block_v} | ({"chunk_size": triton_chunk} if triton_chunk else {})
        fns["triton"] = lambda *xs: wkv7_triton(*xs, **tune)                                   # chunked kernels
        fns["triton-rec"] = lambda *xs: wkv7_triton(*xs, algorithm="recurrent", block_v=block_v)  # token loop
        try:
            import fla.ops.rwkv7  # noqa: F401
            fns["fla"] = wkv7_fla
        except ImportError:
            print("# fla not installed: skipping the fla chunk_rwkv7 column", file=sys.stderr)
    return fns


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T in {256, 1024}, fewer repeats")
    p.add_argument("--T", type=int, nargs="+", default=None)
    p.add_argument("--BH", type=int, nargs="+", default=[8, 64], help="B*H values (H = 8 heads per row)")
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=None, help="value dim (default K)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="chunk of the torch chunked path")
    p.add_argument("--triton-chunk", type=int, default=None, help="chunk of the Triton chunk kernels (default: theirs)")
    p.add_argument("--block-v", type=int, default=None, help="value block of the Triton kernels (default: planned)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these back ends (chunked, naive, triton, triton-rec, fla), e.g. to tune the kernels")
    p.add_argument("--naive-max-T", type=int, default=None,
                   help="run the naive loop only up to this T; longer rows are extrapolated linearly from the "
                        "longest measured T (default: 1024 on CPU, 4096 on CUDA)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic over the repeats; min is the steadier one on a shared, noisy host")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--all-grads", action="store_true", help="also backpropagate to r, logw, k, v, a, b")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; on a shared machine use fewer threads than idle cores (OpenMP "
                        "threads that compete for busy cores can be 100x slower)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    Ts = args.T or ([256, 1024] if args.quick else [256, 1024, 4096])
    K, V = args.K, args.V or args.K
    repeats = args.repeats or (2 if args.quick else 3)
    naive_max_T = args.naive_max_T or (1024 if device == "cpu" else 4096)
    dtype = getattr(torch, args.dtype)
    fns = backends(device, args.chunk, args.triton_chunk, args.block_v)
    if args.only:
        unknown = set(args.only) - set(fns)
        if unknown:
            p.error(f"--only: {sorted(unknown)} not available here; choose from {sorted(fns)}")
        fns = {name: fn for name, fn in fns.items() if name in args.only}
    names = list(fns)

    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
    kernels = (f" triton chunk={args.triton_chunk or 'default'} block_v={args.block_v or 'planned'}"
               if device == "cuda" else "")
    print(f"# device={device} ({where})"
          f" torch={torch.__version__} dtype={args.dtype} K={K} V={V} chunk={args.chunk}{kernels} repeats={repeats}"
          f" grads={'all inputs + s0' if args.all_grads else 's0'} stat={args.stat} (back ends interleaved)")
    print("# throughput: B*H*T (head, token) pairs per second of forward + backward; "
          "fwd GFLOP / IO MB: chunked-form cost model (backward ~2x forward)")
    cols = ["T", "B*H", "fwd GFLOP", "IO MB"] + [f"{n} ktok/s" for n in names]
    if "naive" in names:
        cols += [f"{n}/naive" for n in names if n != "naive"]
    if "fla" in names and "triton" in names:
        cols += ["triton time / fla"]
    if device == "cuda":
        cols += [f"{n} MiB" for n in names]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))

    for BH in args.BH:
        H = min(8, BH)
        B = BH // H
        naive_rate: float | None = None                      # seconds per token at the longest measured T
        for T in Ts:
            inputs, s0 = make_inputs(B, T, H, K, V, device, dtype)
            skip_naive = T > naive_max_T
            steps = {name: fwd_bwd_step(fn, inputs, s0, args.all_grads) for name, fn in fns.items()
                     if not (name == "naive" and skip_naive)}
            res = time_interleaved(steps, device, repeats, args.stat)
            if "naive" in names and skip_naive:
                res["naive"] = Result(naive_rate * T if naive_rate is not None else None, None, "~")
            elif "naive" in names:
                naive_rate = res["naive"].seconds / T
            flops, bytes_ = chunked_cost(T, BH, K, V, args.chunk)
            row = [str(T), str(BH), f"{flops / 1e9:.2f}", f"{bytes_ / 2**20:.1f}"]
            for n in names:
                s = res[n].seconds
                row.append("n/a" if s is None else f"{res[n].note}{BH * T / s / 1e3:.1f}")
            if "naive" in names and res["naive"].seconds is not None:
                row += [f"{res['naive'].note}{res['naive'].seconds / res[n].seconds:.1f}x"
                        for n in names if n != "naive"]
            if "fla" in names and "triton" in names:
                row.append(f"{res['triton'].seconds / res['fla'].seconds:.2f}")
            if device == "cuda":
                row += ["-" if res[n].peak_mib is None else f"{res[n].peak_mib:.0f}" for n in names]
            print("| " + " | ".join(row) + " |", flush=True)
    if any(T > naive_max_T for T in Ts) and "naive" in names:
        print(f"# ~ : naive not run for T > {naive_max_T}; its time is extrapolated linearly in T "
              "(the token loop is O(T)) from the longest measured T")


if __name__ == "__main__":
    main()

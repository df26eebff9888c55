"""Triton WKV-7 kernels vs the float64 token-loop reference (forward, every gradient incl. ds0, varlen, decode).

Without a GPU the kernels run in Triton's interpreter. Triton picks interpreter or compiler when a @triton.jit
function is *defined*, including its own library functions (tl.sum, tl.cdiv) when triton is first imported, so
TRITON_INTERPRET=1 must be set before anything imports triton: this module and test_fla_backend.py set it at the
top (a conftest.py doing so would cover every order), re-import our kernels if they were loaded compiled, and
fail loudly if triton itself was imported compiled first.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if DEVICE == "cpu" and not isinstance(tl.sum, InterpretedFunction):
    raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set, so its library functions are "
                       "compiled-only and the kernels cannot run on CPU; set TRITON_INTERPRET=1 in tests/conftest.py "
                       "or in the environment")

from wkv_inputs import NAMES, make_inputs, rel_err  # noqa: E402

from rl_statetune.checkpoint import load_model  # noqa: E402
from rl_statetune.wkv import wkv7, wkv7_naive  # noqa: E402


def _load_kernels():
    fwd = sys.modules.get("rl_statetune_kernels.recurrent_fwd")
    if DEVICE == "cpu" and fwd is not None and not isinstance(fwd._wkv7_fwd_kernel, InterpretedFunction):
        for name in [m for m in sys.modules if m == "rl_statetune_kernels" or m.startswith("rl_statetune_kernels.")]:
            del sys.modules[name]
    return importlib.import_module("rl_statetune_kernels")


kernels = _load_kernels()
def reference(inputs, dy, ds, use_y=True, use_s=True):
    """float64 naive outputs and gradients of <y, dy> + <sT, ds>."""
    xs = [x.clone().requires_grad_() for x in inputs]
    y, sT = wkv7_naive(*xs)
    loss = (y * dy).sum() * use_y + (sT * ds).sum() * use_s
    return y, sT, torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)


def run_triton(inputs, dy, ds, dtype, use_y=True, use_s=True, **kw):
    xs = [x.to(DEVICE, dtype).requires_grad_() for x in inputs[:6]]
    s0 = inputs[6].to(DEVICE, torch.float32).requires_grad_()
    y, sT = kernels.wkv7_triton(*xs, s0, **kw)
    loss = (y.float() * dy.to(DEVICE, torch.float32)).sum() * use_y + (sT * ds.to(DEVICE, torch.float32)).sum() * use_s
    return y, sT, torch.autograd.grad(loss, xs + [s0])


def assert_all_close(got, want, tol):
    y, sT, grads = got
    y_ref, s_ref, g_ref = want
    errs = {"y": rel_err(y, y_ref), "sT": rel_err(sT, s_ref)}
    errs.update({f"d{n}": rel_err(g, gr) for n, g, gr in zip(NAMES, grads, g_ref)})
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"


ALGOS = [("chunk", 16), ("recurrent", 8)]   # (algorithm, chunk size): both cut T = 37 into a ragged last chunk


@pytest.mark.parametrize("algorithm,chunk", ALGOS, ids=[a for a, _ in ALGOS])
@pytest.mark.parametrize("K,V,block_v", [(16, 16, None), (12, 40, 16)], ids=["K16-V16", "K12-V40-3blocks"])
def test_fp32_forward_and_all_gradients_match_float64_reference(K, V, block_v, algorithm, chunk):
    inputs = make_inputs(seed=K * 100 + V, B=2, T=37, H=2, K=K, V=V)   # 37: not a multiple of the chunk
    g = torch.Generator().manual_seed(7)
    dy, ds = torch.randn(2, 37, 2, V, generator=g, dtype=torch.float64), torch.randn(2, 2, V, K, generator=g,
                                                                                     dtype=torch.float64)
    got = run_triton(inputs, dy, ds, torch.float32, chunk_size=chunk, block_v=block_v, algorithm=algorithm)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_all_close(got, reference(inputs, dy, ds), tol=1e-5)


@pytest.mark.parametrize("chunk", [32, 64])
def test_chunk_algorithm_with_larger_chunks(chunk):
    """Larger chunks widen the e^{+-cs} range inside a chunk; 64 * 0.61 still fits float32."""
    inputs = make_inputs(seed=chunk, B=1, T=2 * chunk + 5, H=2, K=16, V=16)
    g = torch.Generator().manual_seed(chunk)
    dy = torch.randn(1, 2 * chunk + 5, 2, 16, generator=g, dtype=torch.float64)
    ds = torch.randn(1, 2, 16, 16, generator=g, dtype=torch.float64)
    got = run_triton(inputs, dy, ds, torch.float32, chunk_size=chunk, algorithm="chunk")
    assert_all_close(got, reference(inputs, dy, ds), tol=1e-5)


@pytest.mark.parametrize("algorithm,chunk", ALGOS, ids=[a for a, _ in ALGOS])
@pytest.mark.parametrize("use_y,use_s", [(True, False), (False, True)], ids=["loss-on-y", "loss-on-state"])
def test_gradient_when_only_one_output_is_used(use_y, use_s, algorithm, chunk):
    inputs = make_inputs(seed=11 + use_y, B=1, T=20, H=2, K=16, V=16)
    g = torch.Generator().manual_seed(3)
    dy, ds = torch.randn(1, 20, 2, 16, generator=g, dtype=torch.float64), torch.randn(1, 2, 16, 16, generator=g,
                                                                                      dtype=torch.float64)
    got = run_triton(inputs, dy, ds, torch.float32, use_y=use_y, use_s=use_s, chunk_size=chunk, algorithm=algorithm)
    assert_all_close(got, reference(inputs, dy, ds, use_y, use_s), tol=1e-5)


@pytest.mark.parametrize("algorithm", ["chunk", "recurrent"])
def test_bf16_inputs_match_reference_on_rounded_inputs(algorithm):
    inputs = make_inputs(seed=5, B=2, T=29, H=2, K=16, V=16)
    rounded = [x.to(torch.bfloat16).double() for x in inputs[:6]] + [inputs[6].float().double()]
    g = torch.Generator().manual_seed(9)
    dy = torch.randn(2, 29, 2, 16, generator=g, dtype=torch.float64).to(torch.bfloat16).double()
    ds = torch.randn(2, 2, 16, 16, generator=g, dtype=torch.float64)
    got = run_triton(rounded, dy, ds, torch.bfloat16, chunk_size=16, algorithm=algorithm)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert all(gr.dtype == torch.bfloat16 for gr in got[2][:6]) and got[2][6].dtype == torch.float32
    assert_all_close(got, reference(rounded, dy, ds), tol=2e-2)


@pytest.mark.parametrize("algorithm,chunk", ALGOS, ids=[a for a, _ in ALGOS])
def test_varlen_cu_seqlens_matches_per_sequence_reference(algorithm, chunk):
    lengths = [13, 0, 21, 6]                        # includes an empty sequence: sT = s0, ds0 = dsT
    total, N, H, K, V = sum(lengths), len(lengths), 2, 16, 24
    packed = make_inputs(seed=21, B=1, T=total, H=H, K=K, V=V, n_states=N)
    g = torch.Generator().manual_seed(4)
    dy = torch.randn(1, total, H, V, generator=g, dtype=torch.float64)
    ds = torch.randn(N, H, V, K, generator=g, dtype=torch.float64)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    got = run_triton(packed, dy, ds, torch.float32, cu_seqlens=cu.to(DEVICE), chunk_size=chunk, block_v=16,
                     algorithm=algorithm)

    ys, states, grads = [], [], [[] for _ in NAMES]
    for n in range(N):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        seq = [x[:, sl] for x in packed[:6]] + [packed[6][n:n + 1]]
        y, sT, gr = reference(seq, dy[:, sl], ds[n:n + 1])
        ys.append(y)
        states.append(sT)
        for acc, gi in zip(grads, gr):
            acc.append(gi)
    want = (torch.cat(ys, 1), torch.cat(states, 0),
            [torch.cat(gs, dim=1 if i < 6 else 0) for i, gs in enumerate(grads)])   # tokens vs sequences
    assert_all_close(got, want, tol=1e-5)
    assert torch.equal(got[1][1].cpu(), packed[6][1].float())                  # empty sequence keeps s0
    assert torch.equal(got[2][6][1].cpu(), ds[1].float())


def test_decode_steps_match_reference_and_inplace():
    B, T, H, K, V = 2, 5, 2, 16, 24
    inputs = make_inputs(seed=31, B=B, T=T, H=H, K=K, V=V)
    y_ref, s_ref = wkv7_naive(*inputs)
    x32 = [x.to(DEVICE, torch.float32) for x in inputs]
    state, ys = x32[6].clone(), []
    for t in range(T):
        step = [x[:, t] for x in x32[:6]]
        y_t, state_new = kernels.wkv7_triton_decode(*step, state)
        assert state_new.data_ptr() != state.data_ptr()
        ys.append(y_t)
        state = state_new
    assert rel_err(torch.stack(ys, 1), y_ref) < 1e-5
    assert rel_err(state, s_ref) < 1e-5

    inplace_state = x32[6].clone()
    y0, returned = kernels.wkv7_triton_decode(*[x[:, :1] for x in x32[:6]], inplace_state, inplace=True)
    assert returned.data_ptr() == inplace_state.data_ptr() and y0.shape == (B, 1, H, V)
    y_ref1, s_ref1 = wkv7_naive(*[x[:, :1] for x in inputs[:6]], inputs[6])
    assert rel_err(y0, y_ref1) < 1e-5 and rel_err(inplace_state, s_ref1) < 1e-5


def test_dispatcher_triton_backend_packs_lengths_with_gradients():
    """lengths -> cu_seqlens packing: outputs on valid positions, final states and every gradient."""
    inputs = make_inputs(seed=41, B=3, T=21, H=1, K=16, V=16)
    lengths = torch.tensor([21, 7, 0])
    valid = (torch.arange(21)[None, :] < lengths[:, None])[..., None, None]
    g = torch.Generator().manual_seed(2)
    dy = torch.randn(3, 21, 1, 16, generator=g, dtype=torch.float64) * valid
    ds = torch.randn(3, 1, 16, 16, generator=g, dtype=torch.float64)

    def run(xs, backend):
        y, sT = wkv7(*xs, lengths=lengths, backend=backend)
        grads = torch.autograd.grad((y * dy.to(y)).sum() + (sT * ds.to(sT)).sum(), xs)
        return y * valid.to(y.device), sT, grads

    got = run([x.float().to(DEVICE).requires_grad_() for x in inputs], "triton")
    want = run([x.clone().requires_grad_() for x in inputs], "naive")
    assert_all_close(got, want, tol=1e-5)


def test_dispatcher_decodes_single_tokens_with_the_decode_kernel(monkeypatch):
    """T = 1 without gradients (generation) takes the one-step kernel; with gradients the sequence kernels."""
    B, H, K, V = 2, 2, 16, 24
    inputs = make_inputs(seed=51, B=B, T=1, H=H, K=K, V=V)
    y_ref, s_ref = wkv7_naive(*inputs)
    x32 = [x.to(DEVICE, torch.float32) for x in inputs]
    calls = []
    decode = kernels.wkv7_triton_decode
    monkeypatch.setattr(kernels, "wkv7_triton_decode", lambda *a, **kw: calls.append(1) or decode(*a, **kw))
    with torch.no_grad():
        y, sT = wkv7(*x32, backend="triton")
    assert calls == [1] and y.shape == (B, 1, H, V) and sT.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5 and rel_err(sT, s_ref) < 1e-5
    s0 = x32[6].clone().requires_grad_()
    y, sT = wkv7(*x32[:6], s0, backend="triton")
    (y.sum() + sT.sum()).backward()
    assert calls == [1] and s0.grad is not None


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(2, 4, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="logw has shape"):
        kernels.wkv7_triton(x, x[:, :3], x, x, x, x)
    with pytest.raises(ValueError, match="s0 has shape"):
        kernels.wkv7_triton(x, x, x, x, x, x, torch.zeros(2, 1, 16, 8, device=DEVICE))
    with pytest.raises(ValueError, match="packed as"):
        kernels.wkv7_triton(x, x, x, x, x, x, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        kernels.wkv7_triton(x[:1], x[:1], x[:1], x[:1], x[:1], x[:1],
                            cu_seqlens=torch.tensor([0, 3], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="chunk algorithm needs chunk_size"):
        kernels.wkv7_triton(x, x, x, x, x, x, chunk_size=8)
    with pytest.raises(ValueError, match="unknown algorithm"):
        kernels.wkv7_triton(x, x, x, x, x, x, algorithm="parallel")
    with pytest.raises(ValueError, match="unsupported dtype"):
        kernels.wkv7_triton(*[x.double()] * 6)
    with pytest.raises(ValueError, match="one token"):
        kernels.wkv7_triton_decode(x, x, x, x, x, x)


@pytest.mark.skipif(DEVICE != "cpu", reason="checks the CPU-without-interpreter error path")
def test_cpu_without_interpreter_raises_runtime_error():
    code = ("import torch\nfrom rl_statetune_kernels import wkv7_triton\nx = torch.zeros(1, 2, 1, 16)\n"
            "try:\n    wkv7_triton(x, x, x, x, x, x)\nexcept RuntimeError as e:\n    print('RAISED', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RAISED" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the tests above already compile and run the kernels")
def test_default_chunk_kernels_compile_for_sm90():
    """The interpreter does not compile; this runs Triton's real compiler for an H100 (sm_90) in a subprocess
    without TRITON_INTERPRET and checks that the five chunk kernels compile at the default launch configuration
    and fit: shared memory within the 227 KiB per block, registers within 255 (spills are reported by
    benchmarks/kernel_resources.py, not asserted)."""
    code = ("import json\nfrom rl_statetune_kernels.aot import kernel_resources\n"
            "print(json.dumps(kernel_resources('chunk', K=64, V=64, chunk=16, BV=32, num_warps=8, arch=90)))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    resources = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(resources) == {"local", "states", "output", "adjoint", "grads"}
    for regs, _spill, smem in resources.values():
        assert regs is not None and 0 < regs <= 255, resources
        assert 0 <= smem <= 227 * 1024, resources


@pytest.mark.slow
def test_every_flag_combination_compiles_for_sm90_bf16_and_sm80_fp32():
    """Each boolean constexpr (varlen, initial state, which output gradients, checkpoints, values) changes the
    code the GPU compiler sees, and the interpreter never compiles it. Every combination of every kernel (the
    decode step too), at an irregular K = 24, V = 40, must go through Triton's compiler and ptxas (~2 min)."""
    code = """
import itertools, json
from rl_statetune_kernels.aot import kernel_resources
failed = []
for algo, varlen, s0, dy, dst, ckpt, values in itertools.product(
        ["chunk", "recurrent", "decode"], *[[False, True]] * 6):
    if not (dy or dst):
        continue                       # the backward always has at least one output gradient
    for dtype, arch in [("bf16", 90), ("fp32", 80)]:
        try:
            res = kernel_resources(algo, 24, 40, 16, 32, 8, arch, dtype, IS_VARLEN=varlen, HAS_S0=s0, HAS_DY=dy,
                                   HAS_DST=dst, STORE_CKPT=ckpt, WITH_VALUES=values)
            assert all(regs and smem <= 227 * 1024 for regs, _, smem in res.values()), res
        except Exception as e:
            failed.append([algo, varlen, s0, dy, dst, ckpt, values, dtype, repr(e)[:500]])
print(json.dumps(failed))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_model_with_upscaled_state_on_triton_matches_torch_backend(tiny_ckpt):
    """End to end through the model: two heads, V = N = 16, the lifted state's K = M = 24 (not a power of two),
    right-padded rows, gradients to S0, S~0 and R. Same float32 model, "triton" vs the CPU "torch" backend."""
    from conftest import TINY

    from rl_statetune.upscale import build_upscaled_state

    model = load_model(tiny_ckpt, dtype=torch.float32).to(DEVICE)
    up = build_upscaled_state(model, "rbf", 24, support="random", seed=0).to(DEVICE)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in (up.time_state, up.lifted_state):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    params = [up.time_state, up.lifted_state] + [lift.decor.R for lift in up.lifts]
    idx = torch.randint(1, TINY.vocab_size, (2, 21), generator=g).to(DEVICE)
    lengths = torch.tensor([21, 13], device=DEVICE)
    valid = (torch.arange(21, device=DEVICE)[None, :] < lengths[:, None])[..., None]
    weights = torch.randn(2, 21, TINY.vocab_size, generator=g).to(DEVICE) * valid

    def run(backend):
        model.wkv_backend = backend
        logits, state = model(idx, up.initial_state(model, 2), lengths=lengths)
        return (logits * valid, state.lifted, torch.autograd.grad((logits * weights).sum(), params))

    got, want = run("triton"), run("torch")
    for x, ref in [(got[0], want[0]), (got[1], want[1])] + list(zip(got[2], want[2])):
        assert rel_err(x, ref.detach().double()) < 1e-5


def test_benchmark_cuda_branch_prints_every_column(monkeypatch, capsys):
    """benchmarks/wkv.py's CUDA branch (triton, triton-rec, fla columns, the fla ratio, peak memory) has to work
    the first time a GPU session runs it. On CPU: the kernels in the interpreter, torch.cuda's timing and memory
    calls stubbed, an empty stand-in fla package, and our fla adapter pointed at the recurrent kernel."""
    import importlib.util
    import pathlib
    import types

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "wkv.py"
    spec = importlib.util.spec_from_file_location("bench_wkv", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_wkv", bench)          # dataclasses look their module up there
    spec.loader.exec_module(bench)
    if DEVICE == "cpu":
        for name, value in [("synchronize", None), ("reset_peak_memory_stats", None), ("memory_allocated", 0),
                            ("max_memory_allocated", 5 * 2**20), ("get_device_name", "stub")]:
            monkeypatch.setattr(torch.cuda, name, lambda *a, _v=value: _v)
        make = bench.make_inputs
        monkeypatch.setattr(bench, "make_inputs", lambda B, T, H, K, V, _dev, dt: make(B, T, H, K, V, "cpu", dt))
        fla = types.ModuleType("fla")
        fla.ops = types.ModuleType("fla.ops")
        fla.ops.rwkv7 = types.ModuleType("fla.ops.rwkv7")
        monkeypatch.setitem(sys.modules, "fla", fla)
        monkeypatch.setitem(sys.modules, "fla.ops", fla.ops)
        monkeypatch.setitem(sys.modules, "fla.ops.rwkv7", fla.ops.rwkv7)
        monkeypatch.setattr(kernels, "wkv7_fla", lambda *xs: kernels.wkv7_triton(*xs, algorithm="recurrent"))
    bench.main(["--device", "cuda", "--T", "8", "12", "--BH", "1", "--K", "8", "--repeats", "1",
                "--naive-max-T", "8"])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "---" not in line]
    header, *body = rows
    expected = ["triton ktok/s", "triton-rec ktok/s", "triton/naive", "triton MiB"]
    if "fla" in sys.modules or importlib.util.find_spec("fla") is not None:      # a real GPU may lack fla
        expected += ["fla ktok/s", "triton time / fla", "fla MiB"]
    for col in expected:
        assert col in header, header
    assert [r[0] for r in body] == ["8", "12"] and all(len(r) == len(header) for r in body)
    cell = dict(zip(header, body[1]))
    assert cell["naive MiB"] == "-" and cell["triton/naive"].startswith("~")   # T = 12 extrapolates the loop
    assert "fla ktok/s" not in header or float(cell["triton time / fla"]) > 0

    # the tuning form a GPU session uses: only the kernels, a chosen chunk and value block
    bench.main(["--device", "cuda", "--T", "40", "--BH", "1", "--K", "8", "--V", "24", "--repeats", "1",
                "--only", "triton", "--triton-chunk", "32", "--block-v", "16"])
    out = capsys.readouterr().out
    assert "triton chunk=32 block_v=16" in out
    header, row = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
                   if line.startswith("| ") and "---" not in line]
    assert header == ["T", "B*H", "fwd GFLOP", "IO MB", "triton ktok/s", "triton MiB"] and row[0] == "40"

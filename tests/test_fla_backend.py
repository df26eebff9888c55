"""The optional fla backend: layout translation (CPU, with a stand-in for fla) and, on a GPU with fla installed,
agreement of fla's chunk_rwkv7 with the float64 reference (y, sT and every gradient incl. ds0)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"    # before triton is imported: see tests/test_triton_wkv.py

from wkv_inputs import NAMES, make_inputs, rel_err  # noqa: E402

from rl_statetune.wkv import wkv7_naive  # noqa: E402
from rl_statetune_kernels import fla_backend, wkv7_fla  # noqa: E402

def fake_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                     head_first=False):
    """Stand-in with fla's contract: state [N, H, K, V], output scaled by ``scale``, w = log decay."""
    assert output_final_state and not head_first and cu_seqlens is None
    s0 = initial_state.transpose(-1, -2) if initial_state is not None else None
    y, sT = wkv7_naive(r * scale, w, k, v, a, b, s0)
    return y, sT.transpose(-1, -2)


def test_layout_translation_against_fla_contract():
    inputs = make_inputs(seed=1, B=2, T=9, H=2, K=8, V=12)
    xs = [x.clone().requires_grad_() for x in inputs]
    y, sT = fla_backend.call_chunk_rwkv7(fake_chunk_rwkv7, *xs)
    y_ref, s_ref = wkv7_naive(*inputs)
    assert sT.shape == (2, 2, 12, 8)
    assert rel_err(y, y_ref) < 1e-6 and rel_err(sT, s_ref) < 1e-6
    (sT * torch.arange(sT.numel()).view_as(sT)).sum().backward()   # ds0 flows back through the transposes
    s0 = inputs[6].clone().requires_grad_()
    _, s_ref = wkv7_naive(*inputs[:6], s0)
    (s_ref * torch.arange(s_ref.numel()).view_as(s_ref)).sum().backward()
    assert rel_err(xs[6].grad, s0.grad) < 1e-6


def test_clear_errors_without_fla_or_gpu(monkeypatch):
    x = torch.zeros(1, 2, 1, 8)
    monkeypatch.setitem(sys.modules, "fla", None)                # import fla -> ImportError
    with pytest.raises(ImportError, match="flash-linear-attention"):
        wkv7_fla(x, x, x, x, x, x)
    monkeypatch.setattr(fla_backend, "_load_chunk_rwkv7", lambda: fake_chunk_rwkv7)
    with pytest.raises(RuntimeError, match="only on CUDA"):
        wkv7_fla(x, x, x, x, x, x)


def _gpu_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU: fla's chunk_rwkv7 runs only on CUDA"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed"
    return None


@pytest.mark.gpu   # fp32 tolerance allows for fla's TF32 tensor-core matmuls
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_fla_matches_float64_reference_on_gpu(dtype, tol):
    reason = _gpu_skip_reason()
    if reason:
        print(f"SKIP test_fla_matches_float64_reference_on_gpu: {reason}")
        pytest.skip(reason)
    lengths = [70, 33, 128]
    total, N, H, K, V = sum(lengths), len(lengths), 2, 64, 64
    inputs = make_inputs(seed=2, B=1, T=total, H=H, K=K, V=V, n_states=N)
    inputs = [x.to(dtype).double() for x in inputs[:6]] + [inputs[6]]
    cu = torch.tensor([0, 70, 103, 231], device="cuda")
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(1, total, H, V, generator=g, dtype=torch.float64).to(dtype).double()
    ds = torch.randn(N, H, V, K, generator=g, dtype=torch.float64)

    xs = [x.cuda().to(dtype).requires_grad_() for x in inputs[:6]] + [inputs[6].cuda().float().requires_grad_()]
    y, sT = wkv7_fla(*xs, cu_seqlens=cu)
    got = torch.autograd.grad((y.float() * dy.cuda().float()).sum() + (sT * ds.cuda().float()).sum(), xs)

    refs = []
    for n in range(N):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        seq = [x[:, sl].clone().requires_grad_() for x in inputs[:6]] + [inputs[6][n:n + 1].clone().requires_grad_()]
        y_n, s_n = wkv7_naive(*seq)
        g_n = torch.autograd.grad((y_n * dy[:, sl]).sum() + (s_n * ds[n:n + 1]).sum(), seq)
        refs.append((y_n, s_n, g_n))
    assert rel_err(y, torch.cat([t[0] for t in refs], 1)) < tol
    assert rel_err(sT, torch.cat([t[1] for t in refs], 0)) < tol
    for i, name in enumerate(NAMES):
        want = torch.cat([t[2][i] for t in refs], 1 if i < 6 else 0)
        assert rel_err(got[i], want) < tol, name

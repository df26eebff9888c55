"""The chunked torch WKV-7 path against the float64 token-by-token recurrence: values and every gradient."""

from __future__ import annotations

import pytest
import torch

from wkv_inputs import make_inputs

from rl_statetune.wkv import wkv7, wkv7_chunked, wkv7_naive


@pytest.mark.parametrize("T,chunk", [(1, 32), (20, 32), (37, 32), (64, 16), (50, 8)])
@pytest.mark.parametrize("K,V", [(16, 16), (24, 8)])
def test_chunked_matches_naive_float64(T, chunk, K, V):
    xs = [x.requires_grad_() for x in make_inputs(T * 100 + K, 2, T, 3, K, V)]
    y1, s1 = wkv7_naive(*xs)
    g1 = torch.autograd.grad((y1 * y1.detach().cos()).sum() + (s1 ** 2).sum(), xs)
    y2, s2 = wkv7_chunked(*xs, chunk_size=chunk)
    g2 = torch.autograd.grad((y2 * y1.detach().cos()).sum() + (s2 ** 2).sum(), xs)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(["dr", "dlogw", "dk", "dv", "da", "db", "ds0"], g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=name)


@pytest.mark.parametrize("T,chunk", [(1, 32), (50, 8), (64, 16)])
def test_state_only_gradient_matches_naive_float64(T, chunk):
    """Only s0 needs a gradient (the lean path without an autograd graph over the precompute). B*H = 6 and
    T = 50, chunk 8 give 7 chunks in precompute blocks of 5 and 2; the loss y.sum() has an expanded gradient."""
    xs = make_inputs(T + chunk, 2, T, 3, 16, 12)
    s0 = xs[6].requires_grad_()
    y1, s1 = wkv7_naive(*xs)
    y2, s2 = wkv7_chunked(*xs, chunk_size=chunk)
    for loss_of in (lambda y, s: (y * y1.detach().cos()).sum() + (s ** 2).sum(), lambda y, s: y.sum()):
        g1, = torch.autograd.grad(loss_of(y1, s1), s0, retain_graph=True)
        g2, = torch.autograd.grad(loss_of(y2, s2), s0, retain_graph=True)
        torch.testing.assert_close(g2, g1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)
    with torch.no_grad():                                  # inference: same values, nothing kept
        y3, s3 = wkv7_chunked(*xs[:6], chunk_size=chunk)
        y4, s4 = wkv7_naive(*xs[:6])
    assert not y3.requires_grad
    torch.testing.assert_close(y3, y4, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s3, s4, rtol=1e-10, atol=1e-10)


def test_gradients_to_some_inputs_and_one_output_match_naive_float64():
    """The recomputing backward with gradients asked for only some inputs (others get None), s0 without one,
    and a loss on y alone or on the final state alone."""
    xs = make_inputs(11, 2, 45, 3, 16, 12)
    for loss_of in (lambda y, s: (y * y.detach().sin()).sum(), lambda y, s: (s ** 3).sum()):
        grads = []
        for fn in (wkv7_naive, lambda *z: wkv7_chunked(*z, chunk_size=8)):
            ins = [x.clone().requires_grad_(i in (1, 3)) for i, x in enumerate(xs)]       # logw and v only
            y, s = fn(*ins)
            loss_of(y, s).backward()
            assert all(x.grad is None for i, x in enumerate(ins) if i not in (1, 3))
            grads.append([ins[1].grad, ins[3].grad])
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_chunked_float32_close_to_float64():
    xs = make_inputs(7, 2, 100, 2, 32, 32)
    y1, s1 = wkv7_naive(*xs)
    y2, s2 = wkv7_chunked(*[x.float() for x in xs])
    assert ((y2.double() - y1).norm() / y1.norm()).item() < 1e-5
    assert ((s2.double() - s1).norm() / s1.norm()).item() < 1e-5


def test_lengths_stop_the_state():
    xs = make_inputs(3, 2, 20, 2, 8, 8)
    _, s = wkv7(*xs, lengths=torch.tensor([20, 13]), backend="torch")
    _, s13 = wkv7_naive(*[x[1:2, :13] for x in xs[:6]], xs[6][1:2])
    torch.testing.assert_close(s[1:2], s13)


def test_shape_errors_are_clear():
    xs = make_inputs(0, 1, 4, 2, 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="state has shape"):
        wkv7(*xs[:6], s0=torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="logw has shape"):
        wkv7(xs[0], xs[1][:, :3], *xs[2:])
    with pytest.raises(ValueError, match="unknown WKV backend"):
        wkv7(*xs, backend="cuda")


def test_benchmark_script_runs_and_prints_its_table():
    """benchmarks/wkv.py is not a test, but it must not rot: a tiny CPU run prints one row per (T, B*H)."""
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "wkv.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--T", "8", "40", "--BH", "2",
                          "--K", "8", "--repeats", "1", "--naive-max-T", "8", "--stat", "min"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0].strip() for r in rows] == ["T", "8", "40"]
    ratio = dict(zip((c.strip() for c in rows[0]), (c.strip() for c in rows[2])))["chunked/naive"]
    assert ratio.startswith("~") and ratio.endswith("x")      # T = 40 extrapolates the naive loop from T = 8

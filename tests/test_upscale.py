"""The kernel-upscaled state: identity at zero, a real per-token recurrence matching a float64 naive reference
of the documented equations, exact gradients to S~_0 and R, bounded, and artifacts that reload exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from rl_statetune.checkpoint import load_model
from rl_statetune.features import FEATURE_MAPS
from rl_statetune.model import RWKV7
from rl_statetune.state import TimeState, load_state, save_state
from rl_statetune.support import build_feature_maps, collect_directions, spherical_kmeans
from rl_statetune.upscale import LayerLift, UpscaledState, build_upscaled_state, tunable_from_file

M = 24  # 1.5 N for the tiny model (N = 16); taylor uses d = 4 -> 21 features


def make_up(model, kind="rbf", seed=0, scale=0.3):
    up = build_upscaled_state(model, kind, M, support="random", seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        up.time_state.copy_(scale * torch.randn(up.time_state.shape, generator=g))
        up.lifted_state.copy_(scale * torch.randn(up.lifted_state.shape, generator=g))
        for lift in up.lifts:
            lift.decor.R.add_(0.1 * torch.randn(lift.decor.R.shape, generator=g))
    return up.to(model.emb.weight.dtype)


def naive_lift(lift: LayerLift, r, kk, a, logw, s0):
    """Per token, per head, in float64, straight from the docs' equations."""
    f, R, A = lift.features, lift.decor.R.double(), lift.decay_mix.double()
    B, T, H, N = r.shape
    S = s0.clone()
    ys = torch.zeros(B, T, H, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                phik = f(kk[b, t][None])[0, h]
                phik = phik / phik.norm()
                rn = r[b, t, h].norm()
                phir = f((r[b, t] / r[b, t].norm(dim=-1, keepdim=True))[None])[0, h]
                z = rn * (R[h] @ (phir / phir.norm()))
                w_l = torch.exp(A[h] @ logw[b, t, h])
                G = torch.diag(w_l) - a[b, t, h].mean() * torch.outer(phik, phik)
                S[b, h] = S[b, h] @ G
                ys[b, t, h] = S[b, h] @ z
    return ys, S


def random_inputs(B, T, H, N, g):
    r = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
    kk = F.normalize(torch.randn(B, T, H, N, generator=g, dtype=torch.float64), dim=-1)
    a = torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    logw = -0.606531 * torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    return r, kk, a, logw


@pytest.mark.parametrize("kind", FEATURE_MAPS)
@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_layer_lift_matches_the_naive_float64_recurrence(kind, backend):
    g = torch.Generator().manual_seed(1)
    maps = build_feature_maps(kind, M, TINY, support="random", seed=2)
    lift = LayerLift(maps[0]).double()
    with torch.no_grad():
        lift.decor.R.add_(0.2 * torch.randn(lift.decor.R.shape, generator=g, dtype=torch.float64))
    r, kk, a, logw = random_inputs(2, 37, TINY.n_head, TINY.head_size, g)
    s0 = torch.randn(2, TINY.n_head, TINY.head_size, lift.dim, generator=g, dtype=torch.float64)
    y, s = lift(r, kk, a, logw, s0, backend=backend)
    y_ref, s_ref = naive_lift(lift, r, kk, a, logw, s0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", FEATURE_MAPS)
def test_zero_lifted_state_is_the_frozen_model_exactly(tiny_ckpt, kind):
    model = load_model(tiny_ckpt)
    up = build_upscaled_state(model, kind, M, support="random")
    idx = torch.randint(0, TINY.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(idx, up.initial_state(model, 3))[0], model(idx)[0], rtol=0, atol=0)
    with torch.no_grad():  # a tuned standard state, lifted state still zero: same as the plain TimeState
        up.time_state.normal_()
    ts = TimeState(model.config, up.time_state)
    torch.testing.assert_close(model(idx, up.initial_state(model, 3))[0], model(idx, ts.initial_state(model, 3))[0],
                               rtol=0, atol=0)


def test_lifted_state_changes_logits_and_evolves_per_token(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.float64)
    up = make_up(model)
    idx = torch.randint(0, TINY.vocab_size, (2, 21), generator=torch.Generator().manual_seed(1))
    full, s_full = model(idx, up.initial_state(model, 2))
    assert (full - model(idx, TimeState(model.config, up.time_state.float()).double()
                         .initial_state(model, 2))[0]).abs().max() > 1e-3
    # token-by-token decoding with the carried state (lifted part included) reproduces the parallel pass
    st, steps = up.initial_state(model, 2), []
    for t in range(idx.shape[1]):
        out, st = model(idx[:, t: t + 1], st)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(st.lifted, s_full.lifted, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(s_full.lifted[:, 0], up.lifted_state)   # it moved


def test_padded_rows_keep_the_lifted_state_at_their_length(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.float64)
    up = make_up(model)
    idx = torch.randint(1, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    _, s = model(idx, up.initial_state(model, 2), lengths=torch.tensor([12, 7]))
    _, s7 = model(idx[1:, :7], up.initial_state(model, 1))
    torch.testing.assert_close(s.lifted[:, 1], s7.lifted[:, 0], rtol=1e-10, atol=1e-10)


def test_gradients_to_lifted_state_and_R_match_finite_differences(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.float64)
    up = make_up(model, kind="rbf")
    idx = torch.randint(0, TINY.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    params = [up.lifted_state] + [l.decor.R for l in up.lifts]

    def loss():
        logits, _ = model(idx, up.initial_state(model, 2))
        return F.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), idx[:, 1:].reshape(-1))

    grads = torch.autograd.grad(loss(), params)
    assert all(gr.abs().sum() > 0 for gr in grads)
    assert all(p.grad is None for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    for p, gr in zip(params, grads):
        for _ in range(1):  # a directional derivative along a random direction
            d = torch.randn(p.shape, generator=g, dtype=torch.float64)
            eps = 1e-6
            with torch.no_grad():
                p.add_(eps * d)
                hi = loss().item()
                p.sub_(2 * eps * d)
                lo = loss().item()
                p.add_(eps * d)
            fd = (hi - lo) / (2 * eps)
            assert abs(fd - (gr * d).sum().item()) < 1e-7 * max(1.0, abs(fd)), (fd, (gr * d).sum().item())


def test_layer_lift_gradcheck():
    g = torch.Generator().manual_seed(4)
    lift = LayerLift(build_feature_maps("performer", 6, TINY, support="random", seed=1)[0]).double()
    r, kk, a, logw = random_inputs(1, 4, TINY.n_head, TINY.head_size, g)
    s0 = torch.randn(1, TINY.n_head, TINY.head_size, 6, generator=g, dtype=torch.float64, requires_grad=True)
    R = (lift.decor.R.detach() + 0.1 * torch.randn(lift.decor.R.shape, generator=g, dtype=torch.float64))

    def fn(s, R):
        return torch.func.functional_call(lift, {"decor.R": R}, (r, kk, a, logw, s), {"backend": "naive"})

    assert torch.autograd.gradcheck(fn, (s0, R.requires_grad_()), fast_mode=True)


def test_lifted_state_stays_bounded_over_long_sequences(tiny_ckpt):
    model = load_model(tiny_ckpt)
    up = make_up(model, scale=1.0)
    idx = torch.randint(0, TINY.vocab_size, (1, 400), generator=torch.Generator().manual_seed(5))
    _, s = model(idx, up.initial_state(model, 1))
    for i in range(TINY.n_layer):   # the transition is a contraction: no head's state norm may grow
        assert bool((s.lifted[i, 0].norm(dim=(-1, -2)) <= up.lifted_state[i].norm(dim=(-1, -2)) + 1e-5).all())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("kind", FEATURE_MAPS)
def test_artifacts_reload_with_identical_logits(tiny_ckpt, tmp_path, kind, suffix):
    model = load_model(tiny_ckpt)
    up = make_up(model, kind=kind)
    path = save_state(tmp_path / f"s{suffix}", up.time_state, metadata={"steps": 1, **up.metadata()},
                      extras=up.extras())
    sf = load_state(path)
    back = tunable_from_file(sf, model.config)
    assert isinstance(back, UpscaledState) and back.kind == kind
    if suffix == ".safetensors":
        assert sf.metadata["upscale"]["feature_map"] == kind
    idx = torch.randint(0, TINY.vocab_size, (2, 15), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(model(idx, back.initial_state(model, 2))[0], model(idx, up.initial_state(model, 2))[0],
                               rtol=0, atol=0)


def test_support_from_model_directions(tiny_ckpt):
    model = load_model(tiny_ckpt)

    class ByteTok:
        def encode(self, s):
            return [b % TINY.vocab_size for b in s.encode()]

    vecs = collect_directions(model, ByteTok(), ["hello world", "abc", "state tuning of rwkv"])
    n_tok = len("hello world") + 3 + len("state tuning of rwkv")
    assert len(vecs) == TINY.n_layer and vecs[0].shape == (2 * n_tok, TINY.n_head, TINY.head_size)
    torch.testing.assert_close(vecs[0].norm(dim=-1), torch.ones(2 * n_tok, TINY.n_head))
    maps = build_feature_maps("rbf", 8, TINY, "kmeans", vecs)
    assert maps[0].basis.shape == (TINY.n_head, 8, TINY.head_size)
    # median heuristic: gamma = 1 / median squared distance to the centres
    d2 = (vecs[1][:, 0, None] - maps[1].basis[0][None]).square().sum(-1)
    assert maps[1].gamma[0].item() == pytest.approx(1 / d2.median().item(), rel=0.05)
    taylor = build_feature_maps("taylor", 21, TINY, "kmeans", vecs)[0]
    assert taylor.dim == 21 and taylor.basis.shape == (TINY.n_head, 4, TINY.head_size)


def test_spherical_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.eye(5)[:3] + 0.0, dim=-1)
    x = F.normalize(centres.repeat(40, 1) + 0.05 * torch.randn(120, 5, generator=g), dim=-1)
    c = spherical_kmeans(x, 3, generator=g)
    assert (c @ centres.T).max(dim=0).values.min() > 0.99


def test_tune_with_upscale_and_dbp_saves_loadable_artifacts(tiny_world_ckpt, tmp_path):
    import json

    import rl_statetune.trainer as trainer
    from rl_statetune.config import parse_config

    cfg = parse_config({
        "model": {"path": str(tiny_world_ckpt)},
        "data": {"task": "synthetic", "train_size": 8, "eval_size": 4},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path)},
        "optim": {"lr": 0.3, "lr_final": 0.03},
        "upscale": {"enabled": True, "feature_map": "rbf", "features": 12, "support_texts": 8},
        "dbp": {"enabled": True, "eta": 1e-3, "subsample": 0.5},
    })
    trainer.tune(cfg, progress=False, evaluate=False)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["decor_loss"] > 0 and r["lifted_norm"] > 0 for r in recs)
    sf = load_state(tmp_path / "state.safetensors")
    assert sf.metadata["upscale"] == {"feature_map": "rbf", "features": 12, "basis_rows": 12}
    up = tunable_from_file(sf, load_model(str(tiny_world_ckpt)).config)
    assert isinstance(up, UpscaledState) and up.lifted_state.abs().sum() > 0
    assert not torch.equal(up.lifts[0].decor.R, torch.eye(12).expand_as(up.lifts[0].decor.R))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    torch.testing.assert_close(ckpt["tunable"]["lifted_state"], up.lifted_state.detach(), rtol=0, atol=0)
    assert load_state(tmp_path / "state.pth").extras == {}     # the runtime file holds the standard state only

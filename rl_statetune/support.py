"""Support vectors (and the other fixed bases) of the feature maps, chosen from the model's own directions.

The lifted state is written by the removal keys kk and read by the receptances r, both taken per head as unit
directions. ``collect_directions`` records them on task text; from those, per layer and head:

* rbf:       centres = spherical k-means of the directions ("kmeans") or random unit vectors ("random");
             gamma = 1 / median squared distance between directions and centres (unless given);
* taylor:    projection = the top-d principal directions ("kmeans") or a random orthonormal d x N ("random");
* performer: orthogonal Gaussian rows; gamma by the median heuristic between directions.

``rl-statetune init-support`` writes the result to a file the trainer can reuse (``save_support``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_statetune.features import (FEATURE_MAPS, FeatureMap, basis_rows, make_feature_map, median_gamma,
                                   orthogonal_gaussian)
from rl_statetune.model import RWKV7, RWKV7Config

log = logging.getLogger("rl_statetune.support")


@torch.no_grad()
def collect_directions(model: RWKV7, tokenizer, texts: list[str], batch_size: int = 16,
                       max_len: int = 256) -> list[torch.Tensor]:
    """Unit directions of kk and r at every real token: per layer a tensor [n, H, N] (kk rows, then r rows)."""
    if not texts:
        raise ValueError("collect_directions needs at least one text")
    cfg = model.config
    H, N = cfg.n_head, cfg.head_size
    found: list[list[torch.Tensor]] = [[] for _ in range(cfg.n_layer)]
    captured: dict = {}
    hooks = []
    def keep(name, i):
        return lambda module, inputs, out: captured.__setitem__((name, i), out)

    for i, blk in enumerate(model.blocks):
        hooks.append(blk.att.receptance.register_forward_hook(keep("r", i)))
        hooks.append(blk.att.key.register_forward_hook(keep("k", i)))
    try:
        for s in range(0, len(texts), batch_size):
            ids = [tokenizer.encode(t)[:max_len] for t in texts[s: s + batch_size]]
            ids = [x for x in ids if x]
            idx = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
            for b, x in enumerate(ids):
                idx[b, : len(x)] = torch.tensor(x)
            lengths = torch.tensor([len(x) for x in ids])
            model.hidden(idx, lengths=lengths)
            keep = torch.arange(idx.shape[1])[None] < lengths[:, None]
            for i, blk in enumerate(model.blocks):
                k = (captured["k", i] * blk.att.k_k).view(*idx.shape, H, N)
                r = captured["r", i].view(*idx.shape, H, N)
                found[i] += [F.normalize(k[keep].float(), dim=-1), F.normalize(r[keep].float(), dim=-1)]
    finally:
        for h in hooks:
            h.remove()
    # kk rows of all batches first, then r rows (the order matters only for reproducibility)
    return [torch.cat(f[0::2] + f[1::2]) for f in found]


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 30,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Cluster unit vectors x [n, N] by cosine similarity; k-means++ seeding. Returns unit centres [k, N].

    With fewer distinct points than k the remaining centres are random unit vectors."""
    n, N = x.shape
    x = F.normalize(x.double(), dim=-1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    dist = (1 - x @ centres[0]).clamp_min(0)
    for _ in range(1, min(k, n)):
        if float(dist.sum()) <= 1e-12:
            break
        j = int(torch.multinomial(dist / dist.sum(), 1, generator=generator))
        centres.append(x[j])
        dist = torch.minimum(dist, (1 - x @ x[j]).clamp_min(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (x @ c.T).argmax(dim=-1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=c.shape[0])
        c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), c)
    if c.shape[0] < k:
        extra = F.normalize(torch.randn(k - c.shape[0], N, generator=generator, dtype=torch.float64), dim=-1)
        c = torch.cat([c, extra])
    return c.float()


def principal_directions(x: torch.Tensor, d: int) -> torch.Tensor:
    """Top-d right singular vectors of x [n, N] (uncentred: the directions themselves carry the signal)."""
    _, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    if vh.shape[0] < d:
        raise ValueError(f"need at least {d} directions for a {d}-dim projection, got {vh.shape[0]}")
    return vh[:d].float()


def random_orthonormal(d: int, N: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[d, N] with orthonormal rows."""
    if d > N:
        raise ValueError(f"a Taylor projection to d={d} needs d <= head size {N}")
    q, _ = torch.linalg.qr(torch.randn(N, d, generator=generator, dtype=torch.float64))
    return q.T.float()


def build_feature_maps(kind: str, features: int, cfg: RWKV7Config, support: str = "kmeans",
                       vectors: list[torch.Tensor] | None = None, gamma: float | None = None,
                       seed: int = 0, max_points: int = 4096) -> list[FeatureMap]:
    """One feature map per layer. ``vectors``: per layer [n, H, N] directions (``collect_directions``); needed for
    k-means/PCA and for the median heuristic. Without them: random bases and gamma 0.5 (median ||x-c||^2 of
    random unit vectors is about 2)."""
    if kind not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {kind!r}; choose one of {', '.join(FEATURE_MAPS)}")
    if support not in ("kmeans", "random"):
        raise ValueError(f"support must be 'kmeans' or 'random', got {support!r}")
    if support == "kmeans" and vectors is None:
        raise ValueError("support 'kmeans' needs the model's direction vectors (collect_directions)")
    H, N = cfg.n_head, cfg.head_size
    P = basis_rows(kind, features)
    if kind == "taylor" and P > N:
        raise ValueError(f"taylor with {features} features projects to d={P} > head size {N}")
    g = torch.Generator().manual_seed(seed)
    maps = []
    for layer in range(cfg.n_layer):
        vec = None if vectors is None else vectors[layer]
        if vec is not None and len(vec) > max_points:  # an even spread over the collected rows
            vec = vec[torch.linspace(0, len(vec) - 1, max_points).long()]
        basis = []
        for h in range(H):
            xh = None if vec is None else vec[:, h]
            if kind == "rbf":
                basis.append(spherical_kmeans(xh, P, generator=g) if support == "kmeans"
                             else F.normalize(torch.randn(P, N, generator=g), dim=-1))
            elif kind == "taylor":
                basis.append(principal_directions(xh, P) if support == "kmeans" else random_orthonormal(P, N, g))
        basis = orthogonal_gaussian(H, P, N, g) if kind == "performer" else torch.stack(basis)
        if gamma is not None:
            gam = torch.full((H,), float(gamma))
        elif kind == "taylor":
            gam = torch.ones(H)          # unused by the Taylor map
        elif vec is None:
            gam = torch.full((H,), 0.5)
        else:
            ref = basis if kind == "rbf" else vec[torch.randperm(len(vec), generator=g)[:256]].transpose(0, 1)
            gam = median_gamma(vec[torch.randperm(len(vec), generator=g)[:2048]], ref)
        maps.append(make_feature_map(kind, basis, gam))
    return maps


def save_support(path: str | Path, maps: list[FeatureMap]) -> Path:
    from safetensors.torch import save_file

    tensors = {f"upscale.{i}.basis": m.basis.contiguous() for i, m in enumerate(maps)}
    tensors |= {f"upscale.{i}.gamma": m.gamma.contiguous() for i, m in enumerate(maps)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"feature_map": maps[0].kind, "features": str(maps[0].dim)})
    return path


def load_support(path: str | Path) -> list[FeatureMap]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        kind = (f.metadata() or {}).get("feature_map")
        keys = set(f.keys())
        n = sum(1 for k in keys if k.endswith(".basis"))
        if kind not in FEATURE_MAPS or n == 0:
            raise ValueError(f"{path} is not a support file written by `rl-statetune init-support`")
        return [make_feature_map(kind, f.get_tensor(f"upscale.{i}.basis"), f.get_tensor(f"upscale.{i}.gamma"))
                for i in range(n)]


def support_from_config(model: RWKV7, tokenizer, texts: list[str], up_cfg, seed: int = 0,
                        max_texts: int = 64) -> list[FeatureMap]:
    """Feature maps for an ``UpscaleConfig``: read from ``support_path`` or built on ``texts`` (the task data)."""
    if getattr(up_cfg, "support_path", None):
        maps = load_support(up_cfg.support_path)
        if len(maps) != model.config.n_layer or maps[0].kind != up_cfg.feature_map:
            raise ValueError(f"{up_cfg.support_path}: {len(maps)} layers of {maps[0].kind!r}, config wants "
                             f"{model.config.n_layer} of {up_cfg.feature_map!r}")
        return maps
    vectors = collect_directions(model, tokenizer, texts[:max_texts])
    return build_feature_maps(up_cfg.feature_map, up_cfg.features, model.config, up_cfg.support, vectors,
                              up_cfg.gamma, seed)

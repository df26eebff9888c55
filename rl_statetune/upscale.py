"""Kernel-upscaled recurrent state: a second tuned state per layer/head, value N x feature M, that evolves with
the frozen model's own decay and removal lifted to feature space (equations and derivation: docs/upscaling.md).

Per layer, head and token, with phih = phi / ||phi|| and A = the feature map's channel weights [M, N]:

    w~_t  = exp(A logw_t)                  per-feature decay: a weighted geometric mean of the channel decays
    abar_t = mean(a_t)                     the head's mean in-context learning rate
    S~_t  = S~_{t-1} (diag(w~_t) - abar_t phih(kk_t) phih(kk_t)^T)        (no writes)
    o_t  += S~_t z_t ,   z_t = ||r_t|| R phih(r_t / ||r_t||)               (added to the WKV output before ln_x)

This is ``wkv7`` with K = M, zero writes, a = -phih(kk), b = abar phih(kk) and read vector z. The transition is
symmetric with eigenvalues in (min w~ - abar, max w~], so |S~_t| never grows; with S~_0 = 0 the output is the
frozen model's, exactly. Trainable: the standard state S_0, S~_0 and R (``rl_statetune.dbp``).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rl_statetune.dbp import Decorrelation, subsample_rows
from rl_statetune.features import FEATURE_MAPS, FeatureMap, make_feature_map
from rl_statetune.model import RWKV7, RWKV7Config, RecurrentState
from rl_statetune.state import StateFile, StateShapeError, TimeState
from rl_statetune.wkv import wkv7

_KIND_CODE = {k: i for i, k in enumerate(FEATURE_MAPS)}


class LayerLift(nn.Module):
    """One layer's lifting: feature map (fixed), decay mixing (fixed) and decorrelation R (learnable).

    ``forward(r, kk, a, logw, s, lengths, backend) -> (o [B,T,H,N], s_new [B,H,N,M])`` with r, kk, a, logw the
    frozen layer's [B,T,H,N] quantities and s the lifted state [B,H,N,M].
    """

    def __init__(self, features: FeatureMap):
        super().__init__()
        self.features = features
        self.decor = Decorrelation(features.n_head, features.dim)
        self.register_buffer("decay_mix", features.channel_weights().float())   # [H, M, N]
        self.record_fraction = 0.0        # > 0: keep that share of read features for the DBP update
        self.recorded: list[torch.Tensor] = []

    @property
    def dim(self) -> int:
        return self.features.dim

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm features phih(x) of unit directions x [..., H, N] -> [..., H, M]."""
        return F.normalize(self.features(x), dim=-1)

    def forward(self, r, kk, a, logw, s, lengths=None, backend: str = "auto"):
        B, T, H, N = r.shape
        cdt = s.dtype
        r, kk, a, logw = r.to(cdt), kk.to(cdt), a.to(cdt), logw.to(cdt)
        r_norm = r.norm(dim=-1, keepdim=True)
        x_read = self.lift(F.normalize(r, dim=-1))
        self._record(x_read, lengths)
        z = self.decor(x_read) * r_norm
        phik = self.lift(kk)
        logw_l = torch.einsum("bthn,hmn->bthm", logw, self.decay_mix.to(cdt))
        abar = a.mean(dim=-1, keepdim=True)
        zero_k = torch.zeros_like(phik)
        zero_v = r.new_zeros(B, T, H, N)
        return wkv7(z, logw_l, zero_k, zero_v, -phik, abar * phik, s0=s, lengths=lengths, backend=backend)

    def _record(self, x: torch.Tensor, lengths) -> None:
        if self.record_fraction <= 0 or not torch.is_grad_enabled():
            return
        x = x.detach()
        if lengths is not None:
            keep = torch.arange(x.shape[1], device=x.device)[None] < lengths.to(x.device)[:, None]
            x = x[keep]
        else:
            x = x.reshape(-1, *x.shape[2:])
        self.recorded.append(subsample_rows(x, self.record_fraction))

    def take_recorded(self) -> torch.Tensor | None:
        """The features recorded since the last call, [n, H, M] (None if nothing was recorded)."""
        if not self.recorded:
            return None
        x, self.recorded = torch.cat(self.recorded), []
        return x


class UpscaledState(TimeState):
    """The standard tuned state plus the lifted state S~_0 [L, H, N, M] (zero-initialised) and its liftings."""

    def __init__(self, cfg: RWKV7Config, feature_maps: list[FeatureMap], init: torch.Tensor | None = None):
        super().__init__(cfg, init)
        if len(feature_maps) != cfg.n_layer:
            raise ValueError(f"need one feature map per layer ({cfg.n_layer}), got {len(feature_maps)}")
        for i, f in enumerate(feature_maps):
            if (f.n_head, f.in_dim) != (cfg.n_head, cfg.head_size):
                raise StateShapeError(f"layer {i}: feature map is for {f.n_head} heads x {f.in_dim}, model has "
                                      f"{cfg.n_head} x {cfg.head_size}")
        dims = {f.dim for f in feature_maps}
        if len(dims) != 1:
            raise ValueError(f"all layers need the same feature count, got {sorted(dims)}")
        self.kind = feature_maps[0].kind
        self.lifts = nn.ModuleList(LayerLift(f) for f in feature_maps)
        self.lifted_state = nn.Parameter(torch.zeros(cfg.n_layer, cfg.n_head, cfg.head_size, dims.pop()))

    @property
    def features(self) -> int:
        return self.lifted_state.shape[-1]

    def initial_state(self, model: RWKV7, batch_size: int) -> RecurrentState:
        s = super().initial_state(model, batch_size)
        s.lifted = self.lifted_state.to(model.state_dtype)[:, None].expand(-1, batch_size, -1, -1, -1)
        s.lift = self.lifts
        return s

    def set_recording(self, fraction: float) -> None:
        for lift in self.lifts:
            lift.record_fraction = fraction

    def num_state_values(self) -> int:
        """Numbers in the saved artifact's states and R (basis buffers excluded)."""
        return self.time_state.numel() + self.lifted_state.numel() + sum(l.decor.R.numel() for l in self.lifts)

    # -- files -------------------------------------------------------------------------------------------------
    def extras(self) -> dict[str, torch.Tensor]:
        out = {"upscale.feature_map": torch.tensor([_KIND_CODE[self.kind]])}
        for i, lift in enumerate(self.lifts):
            out[f"upscale.{i}.state"] = self.lifted_state[i].detach().float()
            out[f"upscale.{i}.basis"] = lift.features.basis.float()
            out[f"upscale.{i}.gamma"] = lift.features.gamma.float()
            out[f"upscale.{i}.R"] = lift.decor.R.detach().float()
        return out

    def metadata(self) -> dict:
        return {"upscale": {"feature_map": self.kind, "features": self.features,
                            "basis_rows": int(self.lifts[0].features.basis.shape[1])}}

    @classmethod
    def from_state_file(cls, sf: StateFile, cfg: RWKV7Config) -> "UpscaledState":
        sf.check_fits(cfg)
        ex = sf.extras
        if "upscale.feature_map" not in ex:
            raise StateShapeError("state file has upscale.* tensors but no upscale.feature_map")
        kind = FEATURE_MAPS[int(ex["upscale.feature_map"].flatten()[0])]
        try:
            maps = [make_feature_map(kind, ex[f"upscale.{i}.basis"], ex[f"upscale.{i}.gamma"])
                    for i in range(cfg.n_layer)]
            up = cls(cfg, maps, sf.time_state)
            with torch.no_grad():
                for i, lift in enumerate(up.lifts):
                    up.lifted_state[i].copy_(ex[f"upscale.{i}.state"])
                    lift.decor.R.copy_(ex[f"upscale.{i}.R"])
        except KeyError as e:
            raise StateShapeError(f"state file lacks upscaled tensor {e.args[0]!r}") from None
        except RuntimeError as e:
            raise StateShapeError(f"upscaled tensors do not fit this model: {e}") from None
        return up


def tunable_from_file(sf: StateFile, cfg: RWKV7Config, source: str = "state") -> TimeState:
    """The tunable a state file holds: a ``TimeState``, or an ``UpscaledState`` when it carries upscale.*."""
    sf.check_fits(cfg, source)
    return UpscaledState.from_state_file(sf, cfg) if sf.upscaled else TimeState(cfg, sf.time_state)


def save_tunable(out_dir, tunable: TimeState, metadata: dict | None = None) -> None:
    """A tuned artefact: ``state.pth`` (the runtime format: the standard state only) and ``state.safetensors``
    (every tunable and the feature bases, with ``metadata``)."""
    from pathlib import Path

    from rl_statetune.state import save_state

    out, meta, extras = Path(out_dir), {"format": "rl_statetune/time_state", **(metadata or {})}, None
    if isinstance(tunable, UpscaledState):
        extras = tunable.extras()
        meta |= tunable.metadata()
    save_state(out / "state.pth", tunable.time_state)
    save_state(out / "state.safetensors", tunable.time_state, metadata=meta, extras=extras)


def load_tunable(path, cfg: RWKV7Config) -> TimeState:
    """``load_state`` + ``tunable_from_file``: what generate and eval attach to a model."""
    from rl_statetune.state import load_state

    return tunable_from_file(load_state(path), cfg, str(path))


def param_groups(tunable: TimeState, lr: float, lifted_lr: float | None = None,
                 r_lr: float | None = None, train_r: bool = True) -> list[dict]:
    """Optimiser groups; each carries ``lr_scale`` (its lr relative to the state's), so one schedule drives all."""
    groups = [{"params": [tunable.time_state], "lr_scale": 1.0, "name": "time_state"}]
    if isinstance(tunable, UpscaledState):
        groups.append({"params": [tunable.lifted_state], "lr_scale": (lifted_lr or lr) / lr, "name": "lifted"})
        Rs = [l.decor.R for l in tunable.lifts]
        if train_r:
            groups.append({"params": Rs, "lr_scale": (r_lr or lr) / lr, "name": "R"})
        else:
            for R in Rs:
                R.requires_grad_(False)
    return groups


@torch.no_grad()
def dbp_step(tunable: TimeState, eta: float, kappa: float, allreduce=None) -> float | None:
    """Apply the DBP update to every layer's R from the features recorded since the last step; returns the
    mean decorrelation loss over layers (None when nothing was recorded).

    ``allreduce`` (tensor -> its mean over data-parallel learners) averages the feature statistics first, so
    every learner applies the same update and R stays identical everywhere."""
    if not isinstance(tunable, UpscaledState):
        return None
    from rl_statetune.dbp import dbp_update_from_moment_, second_moment_sum

    sums, counts = [], []
    for lift in tunable.lifts:
        R, x = lift.decor.R, lift.take_recorded()
        sums.append(torch.zeros_like(R) if x is None else second_moment_sum(R, x))
        counts.append(0 if x is None else x.shape[0])
    n = torch.tensor(counts, dtype=sums[0].dtype, device=sums[0].device)
    if allreduce is not None:
        flat = allreduce(torch.cat([s.reshape(-1) for s in sums] + [n]))
        *parts, n = flat.split([s.numel() for s in sums] + [len(counts)])
        sums = [p.view_as(s) for p, s in zip(parts, sums)]
    losses = [dbp_update_from_moment_(lift.decor.R.data, s / c, eta, kappa)
              for lift, s, c in zip(tunable.lifts, sums, n.tolist()) if c > 0]
    return sum(losses) / len(losses) if losses else None


def build_upscaled_state(model: RWKV7, kind: str, features: int, support: str = "kmeans",
                         vectors: Iterable[torch.Tensor] | None = None, gamma: float | None = None,
                         seed: int = 0) -> UpscaledState:
    """A zero lifted state with feature maps built from the model's own direction vectors (``support``)."""
    from rl_statetune.support import build_feature_maps

    maps = build_feature_maps(kind, features, model.config, support, vectors, gamma, seed)
    return UpscaledState(model.config, maps)


__all__ = ["LayerLift", "UpscaledState", "tunable_from_file", "save_tunable", "load_tunable", "param_groups", "dbp_step",
           "build_upscaled_state"]

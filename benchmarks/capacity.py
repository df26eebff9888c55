"""Capacity of a tuned state: how many key -> value facts it stores (MQAR-style, facts never in the prompt).

Each fact is a prompt of two key tokens followed by one value token; the only thing that can map keys to values
is the tuned state. For K facts we tune on all K (full batch) and report the recall accuracy (argmax over the
whole vocabulary at the value position) for the standard state and for upscaled states with M in {2N, 4N} for
each feature map. Prints a table, writes CSV + PNG to --out.

    python benchmarks/capacity.py                       # embedded model, K in 16..256 (a few minutes)
    python benchmarks/capacity.py --facts 16 64 --steps 60 --model random   # quick
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_statetune.config import OptimConfig
from rl_statetune.model import RWKV7
from rl_statetune.state import TimeState
from rl_statetune.upscale import UpscaledState, dbp_step, param_groups
from rl_statetune.checkpoint import load_model
from rl_statetune.run.setup import lr_at

KEY_POOL, VALUE_POOL = 400, 32  # key pool: random model only


def get_model(name: str) -> RWKV7:
    if name == "random":
        from rl_statetune.init import init_rwkv7
        from rl_statetune.model import RWKV7Config

        cfg = RWKV7Config(vocab_size=4096, n_embd=64, n_layer=4, head_size=32, dim_w=16, dim_a=16, dim_v=8,
                          dim_g=32, dim_ffn=256)
        return init_rwkv7(cfg, seed=0, noise=1.0).requires_grad_(False).eval()
    return load_model(name)


def known_tokens(model: RWKV7) -> list[int]:
    """Token ids the model has seen: the synthetic corpus' vocabulary for the embedded model (its other ids are
    trained to be never predicted), the first ids for a random model."""
    if model.config.vocab_size != 65536:
        return list(range(min(model.config.vocab_size, KEY_POOL + VALUE_POOL)))
    from rl_statetune.synthetic import corpus_documents
    from rl_statetune.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    return sorted({t for d in corpus_documents(300, 0) for t in tok.encode(d)})


def make_facts(model: RWKV7, K: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """idx [K, 3] = (key1, key2, value) with distinct key pairs over known tokens; values from a pool of 32."""
    rng = random.Random(seed)
    ids = known_tokens(model)
    rng.shuffle(ids)
    values, keys = ids[:VALUE_POOL], ids[VALUE_POOL:]
    pairs = set()
    while len(pairs) < K:
        pairs.add((rng.choice(keys), rng.choice(keys)))
    idx = torch.tensor([[a, b, rng.choice(values)] for a, b in sorted(pairs)])
    return idx, idx[:, 2]


def fact_loss(model, tunable, idx):
    hidden, _ = model.hidden(idx[:, :2], tunable.initial_state(model, idx.shape[0]))
    return F.cross_entropy(model.head(hidden[:, -1]).float(), idx[:, 2])


@torch.no_grad()
def recall(model, tunable, idx) -> float:
    hidden, _ = model.hidden(idx[:, :2], tunable.initial_state(model, idx.shape[0]))
    return (model.head(hidden[:, -1]).argmax(-1) == idx[:, 2]).float().mean().item()


def make_tunable(model, variant: str, M: int, seed: int, idx: torch.Tensor, gamma: float | None = None) -> TimeState:
    if variant == "state":
        return TimeState(model.config)
    from rl_statetune.support import build_feature_maps, collect_directions

    class Ids:  # the facts' own keys as the support data: the directions the state will be read with
        def encode(self, s):
            return [int(t) for t in s.split()]

    vecs = collect_directions(model, Ids(), [" ".join(map(str, row[:2].tolist())) for row in idx])
    maps = build_feature_maps(variant, M, model.config, "kmeans", vecs, gamma=gamma, seed=seed)
    return UpscaledState(model.config, maps)


def fit(model, tunable, idx, steps: int, optim: OptimConfig, lifted_lr=None, r_lr=0.01, dbp=None,
        record_every: int = 1) -> list[float]:
    """Full-batch Adam on the facts; returns the loss per step. ``dbp``: (eta, kappa, subsample) or None."""
    opt = torch.optim.AdamW(param_groups(tunable, optim.lr, lifted_lr, r_lr), lr=optim.lr, betas=optim.betas)
    if dbp is not None and isinstance(tunable, UpscaledState):
        tunable.set_recording(dbp[2])
    losses = []
    for step in range(steps):
        lr = lr_at(step, steps, optim)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        opt.zero_grad(set_to_none=True)
        loss = fact_loss(model, tunable, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tunable.parameters(), optim.grad_clip)
        opt.step()
        if dbp is not None:
            dbp_step(tunable, dbp[0], dbp[1])
        losses.append(loss.item())
    return losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="'embedded', 'random' (untrained L4 C64) or a path")
    ap.add_argument("--facts", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--maps", nargs="+", default=["rbf", "taylor", "performer"])
    ap.add_argument("--mult", type=int, nargs="+", default=[2, 4], help="M = mult * N")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=None, help="kernel scale (default: median heuristic)")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    model = get_model(args.model)
    N = model.config.head_size
    optim = OptimConfig(lr=args.lr, lr_final=args.lr / 100)
    variants = [("state", 0)] + [(m, k * N) for m in args.maps for k in args.mult]
    rows = []
    for K in args.facts:
        idx, _ = make_facts(model, K, args.seed)
        for variant, M in variants:
            t0 = time.time()
            tun = make_tunable(model, variant, M, args.seed, idx, args.gamma)
            losses = fit(model, tun, idx, args.steps, optim)
            acc = recall(model, tun, idx)
            n_state = tun.num_state_values() if isinstance(tun, UpscaledState) else tun.time_state.numel()
            name = variant if variant == "state" else f"{variant} M={tun.features}"
            rows.append({"K": K, "variant": name, "accuracy": round(acc, 4), "final_loss": round(losses[-1], 4),
                         "state_values": n_state, "seconds": round(time.time() - t0, 1)})
            print(f"K={K:4d}  {name:18s} acc {acc:6.3f}  loss {losses[-1]:7.4f}  values {n_state:7d}  "
                  f"{time.time() - t0:5.1f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "capacity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    names = list(dict.fromkeys(r["variant"] for r in rows))
    print("\n| variant | " + " | ".join(f"K={k}" for k in args.facts) + " | state values |")
    print("|---|" + "---|" * (len(args.facts) + 1))
    for n in names:
        rs = [r for r in rows if r["variant"] == n]
        print(f"| {n} | " + " | ".join(f"{r['accuracy']:.3f}" for r in rs) + f" | {rs[0]['state_values']} |")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            rs = [r for r in rows if r["variant"] == n]
            ax.plot([r["K"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=n,
                    lw=2.5 if n == "state" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("facts K")
        ax.set_ylabel("recall accuracy")
        ax.set_title(f"state capacity ({args.model}, N={N}, {args.steps} steps)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "capacity.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

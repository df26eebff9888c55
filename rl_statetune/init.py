"""Fresh RWKV-7 weights in the spirit of RWKV-LM's initialisation (for pretraining and test fixtures)."""

from __future__ import annotations

import math

import torch

from rl_statetune.model import RWKV7, RWKV7Config


@torch.no_grad()
def init_rwkv7(cfg: RWKV7Config, seed: int = 0, noise: float = 0.0) -> RWKV7:
    """A trainable RWKV-7 with sensible scales. ``noise`` > 0 also randomises the parameters that RWKV-LM
    starts at zero (output projection, LoRA up-projections, ...) so that every code path gets exercised."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    model = RWKV7(cfg)
    C, L, H, N = cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.head_size
    model.emb.weight.copy_(rand(cfg.vocab_size, C, scale=1e-4 if noise == 0 else 0.5))
    model.head.weight.copy_(rand(cfg.vocab_size, C, scale=0.5 * math.sqrt(cfg.vocab_size / C) / math.sqrt(cfg.vocab_size)))
    ramp = torch.arange(C) / C
    for i, blk in enumerate(model.blocks):
        r01 = i / max(L - 1, 1)
        r1a0 = 1.0 - i / L
        att = blk.att
        att.x_r.copy_((1.0 - ramp ** (0.2 * r1a0)).view(1, 1, C))
        att.x_w.copy_((1.0 - ramp ** (0.9 * r1a0)).view(1, 1, C))
        att.x_k.copy_((1.0 - ramp ** (0.7 * r1a0)).view(1, 1, C))
        att.x_v.copy_((1.0 - ramp ** (0.7 * r1a0)).view(1, 1, C))
        att.x_a.copy_((1.0 - ramp ** (0.9 * r1a0)).view(1, 1, C))
        att.x_g.copy_((1.0 - ramp ** (0.2 * r1a0)).view(1, 1, C))
        n = torch.arange(C) / (C - 1)
        att.w0.copy_((-7 + 5 * n ** (0.85 + r01 ** 0.5) + 0.5).view(1, 1, C))
        att.a0.zero_()
        att.k_k.fill_(0.85)
        att.k_a.fill_(1.0)
        att.r_k.copy_(rand(H, N, scale=0.1) if noise else torch.full((H, N), -0.04))
        for lo, hi, d in ((att.w1, att.w2, cfg.dim_w), (att.a1, att.a2, cfg.dim_a)):
            lo.copy_(rand(C, d, scale=1 / math.sqrt(C)))
            hi.copy_(rand(d, C, scale=noise / math.sqrt(d)) if noise else torch.zeros(d, C))
        # the gate's up-projection must start non-zero: with g = 0 and a zero output projection both gradients
        # vanish and the attention never trains
        att.g1.copy_(rand(C, cfg.dim_g, scale=1 / math.sqrt(C)))
        att.g2.copy_(rand(cfg.dim_g, C, scale=max(noise, 0.1) / math.sqrt(cfg.dim_g)))
        if i > 0:
            att.v0.fill_(1.0)
            att.v1.copy_(rand(C, cfg.dim_v, scale=1 / math.sqrt(C)))
            att.v2.copy_(rand(cfg.dim_v, C, scale=noise / math.sqrt(cfg.dim_v)) if noise else torch.zeros(cfg.dim_v, C))
        for lin in (att.receptance, att.key, att.value):
            lin.weight.copy_(rand(C, C, scale=1 / math.sqrt(C)))
        att.output.weight.copy_(rand(C, C, scale=noise / math.sqrt(C)) if noise else torch.zeros(C, C))
        att.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
        att.ln_x.bias.zero_()
        blk.ffn.x_k.copy_((1.0 - ramp ** (r1a0 ** 4)).view(1, 1, C))
        blk.ffn.key.weight.copy_(rand(cfg.dim_ffn, C, scale=1 / math.sqrt(C)))
        blk.ffn.value.weight.copy_(rand(C, cfg.dim_ffn, scale=noise / math.sqrt(cfg.dim_ffn)) if noise
                                   else torch.zeros(C, cfg.dim_ffn))
        if noise:
            for ln in ([blk.ln0] if i == 0 else []) + [blk.ln1, blk.ln2, att.ln_x]:
                ln.weight.add_(rand(C, scale=noise * 0.2))
                ln.bias.add_(rand(C, scale=noise * 0.2))
            for p in (att.w0, att.a0, att.k_k, att.k_a):
                p.add_(rand(1, 1, C, scale=noise * 0.3))
    return model

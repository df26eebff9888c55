"""The one-token step of RWKV-7 (generation, ``generate_until``, RL sampling): ``decode_step(model, tokens, state)``.

The same computation as ``RWKV7.forward`` with T = 1, written for speed: no token shift by concatenation, no
chunking or reshapes of the sequence path, the six token-shift mixes in one fused op, the WKV update as two
batched matmuls into a freshly allocated state (the input state is never modified), and the small per-layer
vectors prepared once per model (``_layer_constants``). Everything element-wise runs in float32; the big
matrix-vector products run in the weights' dtype (float32: the results equal ``forward``'s; float16 weights run
the CPU's fast F16C path, bfloat16 weights its bfloat16 path). ``model.decode_dtype`` (default None: the weights'
own) makes the step use copies of the big matrices in another dtype: ``torch.float16`` for a bfloat16 model on a
CPU decodes one sequence ~1.6x faster (benchmarks/decode_speed.py) for the memory of a second copy. bfloat16
weights convert exactly to float16 within float16's range (|w| in [6e-5, 65504]; smaller ones lose bits).
``model.decode_transposed = True`` makes a float32 step use [in, out] copies of the head and the FFN key matrices:
MKL's one-row float32 product reads that layout faster for these two shapes (the head 1.6x, 65536 x 768), for the
memory of the copies (+314 MB at the 0.1B shape, +2.1 GB at 1.5B). Logits come back in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_statetune.wkv import DECAY_SCALE

# no import of rl_statetune.model: it imports this module for RWKV7.decode (the model and state come as arguments)


def _mv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, in] float32 @ weight.T ([out, in], any dtype) -> [B, out] float32."""
    if weight.dtype == torch.float32:
        return F.linear(x, weight)
    return F.linear(x.to(weight.dtype), weight).float()


def _apply(x: torch.Tensor, W: dict, name: str) -> torch.Tensor:
    """The step's product with matrix ``name``: through its [in, out] float32 copy where there is one."""
    t = W.get(name + "_t")
    return x @ t if t is not None else _mv(x, W[name])


TRANSPOSED = ("fk", "head")   # the shapes whose one-row float32 product is faster [in, out] (C x 4C, C x vocab)


def _weights_key(model: nn.Module) -> tuple:
    return (model.emb.weight.data_ptr(), model.emb.weight.dtype, model.emb.weight.device,
            sum(p._version for p in model.parameters()), model.decode_dtype, model.decode_transposed)


def _matrices(model: nn.Module) -> list[dict]:
    """Per layer the big matrices of the step, [out, in]: the model's own weights, or copies in
    ``model.decode_dtype`` (made once, e.g. float16 copies of a bfloat16 model for the CPU's fast float16 gemv)."""
    names = {"r": "att.receptance", "k": "att.key", "v": "att.value", "o": "att.output", "fk": "ffn.key",
             "fv": "ffn.value"}
    dt = model.decode_dtype
    own = dt is None or dt == model.emb.weight.dtype
    if own and not model.decode_transposed:
        out = [{n: blk.get_submodule(m).weight for n, m in names.items()} for blk in model.blocks]
        return out + [{"head": model.head.weight}]
    key = _weights_key(model)
    cached = getattr(model, "_decode_matrices", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    cast = (lambda w: w) if own else (lambda w: w.detach().to(dt))  # noqa: E731
    out = [{n: cast(blk.get_submodule(m).weight) for n, m in names.items()} for blk in model.blocks]
    out.append({"head": cast(model.head.weight)})
    if model.decode_transposed:
        for d in out:
            for n in TRANSPOSED:
                if n in d and d[n].dtype == torch.float32:
                    d[n + "_t"] = d[n].detach().t().contiguous()
    model._decode_matrices = (key, out)
    return out


def _layer_constants(model: nn.Module) -> list[dict]:
    """Per layer: the float32 vectors of the one-token step (the six mixes stacked) and LoRA matrices, built once
    per weights. The LoRAs are small (21 MB in float32 at the 0.1B shape); half-precision ones stored [in, out]
    run a slow matmul on CPUs (float16 x @ W is ~20x slower than F.linear's layout), so they are kept in float32."""
    key = _weights_key(model)
    cached = getattr(model, "_decode_constants", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    f = lambda t: t.detach().float().reshape(-1)  # noqa: E731
    out = []
    for i, blk in enumerate(model.blocks):
        att = blk.att
        lora = {n: getattr(att, n).detach().float() for n in ("w1", "w2", "a1", "a2", "g1", "g2")
                + (("v1", "v2") if i > 0 else ())}
        c = {**lora, "mix": torch.stack([f(getattr(att, n)) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")])[:, None],
             "w0": f(att.w0), "a0": f(att.a0), "k_k": f(att.k_k), "k_a": f(att.k_a), "r_k": att.r_k.detach().float(),
             "ln_x": (f(att.ln_x.weight), f(att.ln_x.bias)), "ffn_x_k": f(blk.ffn.x_k),
             "ln1": (f(blk.ln1.weight), f(blk.ln1.bias)), "ln2": (f(blk.ln2.weight), f(blk.ln2.bias))}
        if i == 0:
            c["ln0"] = (f(blk.ln0.weight), f(blk.ln0.bias))
        else:
            c["v0"] = f(att.v0)
        out.append(c)
    out.append({"ln_out": (f(model.ln_out.weight), f(model.ln_out.bias))})
    model._decode_constants = (key, out)
    return out


def decode_step(model: nn.Module, tokens: torch.Tensor, state=None
                ) -> tuple[torch.Tensor, object]:
    """tokens [B] -> (logits [B, V] float32, the state after them). Falls back to ``forward`` where the fast
    step does not apply: an upscaled state, gradients, or a GPU (whose Triton decode kernel ``forward`` uses)."""
    if tokens.dim() != 1:
        raise ValueError(f"decode_step takes one token per row, tokens [B]; got shape {tuple(tokens.shape)}")
    B = tokens.shape[0]
    if state is None:
        state = model.zero_state(B)
    elif state.batch_size != B:
        raise ValueError(f"state has batch size {state.batch_size} but tokens has {B}")
    grad = torch.is_grad_enabled() and (state.wkv.requires_grad or any(p.requires_grad for p in model.parameters()))
    if state.lift is not None or state.lifted is not None or grad or model.emb.weight.device.type != "cpu":
        logits, new = model(tokens[:, None], state)
        return logits[:, 0].float(), new

    cfg = model.config
    C, H, N, L = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer
    consts, mats = _layer_constants(model), _matrices(model)
    new = type(state)(torch.empty_like(state.att_x), torch.empty(state.wkv.shape, dtype=torch.float32),
                         torch.empty_like(state.ffn_x))
    x = model.emb.weight[tokens].float()
    v_first = None
    for i, blk in enumerate(model.blocks):
        c, W, att = consts[i], mats[i], blk.att
        if i == 0:
            x = F.layer_norm(x, (C,), *c["ln0"])
        xn = F.layer_norm(x, (C,), *c["ln1"])
        new.att_x[i] = xn
        mixed = torch.addcmul(xn, state.att_x[i].float() - xn, c["mix"])      # [6, B, C]
        xr, xw, xk, xv, xa, xg = mixed.unbind(0)
        r, k, v = _mv(xr, W["r"]), _mv(xk, W["k"]), _mv(xv, W["v"])
        w = torch.exp(-DECAY_SCALE * torch.sigmoid(c["w0"] + torch.tanh(xw @ c["w1"]) @ c["w2"]))
        a = torch.sigmoid(c["a0"] + (xa @ c["a1"]) @ c["a2"])
        g = torch.sigmoid(xg @ c["g1"]) @ c["g2"]
        kk = F.normalize((k * c["k_k"]).view(B, H, N), dim=-1)
        k = k * (1 + (a - 1) * c["k_a"])
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(c["v0"] + (xv @ c["v1"]) @ c["v2"])

        # S' = S diag(w) + (S (-kk)) (kk a)^T + v k^T ;  y = S' r      (per row and head, S [N_v, N_k])
        S = state.wkv[i].float().reshape(B * H, N, N)
        S_new = new.wkv[i].view(B * H, N, N)
        torch.mul(S, w.view(B * H, 1, N), out=S_new)
        kk = kk.view(B * H, N)
        sa = torch.bmm(S, -kk[:, :, None])                                     # [BH, N, 1]
        left = torch.cat([sa, v.view(B * H, N, 1)], dim=2)                     # [BH, N, 2]
        right = torch.stack([kk * a.view(B * H, N), k.view(B * H, N)], dim=1)  # [BH, 2, N]
        S_new.baddbmm_(left, right)
        y = torch.bmm(S_new, r.view(B * H, N, 1)).view(B, C)

        y = F.group_norm(y, H, *c["ln_x"], eps=att.ln_x.eps)
        y = y + ((r * k).view(B, H, N) * c["r_k"]).sum(-1, keepdim=True).mul(v.view(B, H, N)).view(B, C)
        x = x + _mv(y * g, W["o"])

        xn = F.layer_norm(x, (C,), *c["ln2"])
        new.ffn_x[i] = xn
        kx = torch.addcmul(xn, state.ffn_x[i].float() - xn, c["ffn_x_k"])
        x = x + _mv(torch.relu(_apply(kx, W, "fk")).square_(), W["fv"])
    x = F.layer_norm(x, (C,), *consts[L]["ln_out"])
    return _apply(x, mats[L], "head"), new


__all__ = ["decode_step"]

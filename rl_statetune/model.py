"""Frozen RWKV-7 ("x070") language model, numerically matching the official `rwkv` pip package.

Parameter names equal the BlinkDL checkpoint keys (``blocks.3.att.receptance.weight`` ...), so a ``.pth`` file
loads with ``load_state_dict`` and an exported model loads in every RWKV runtime. The forward pass runs a whole
sequence at once (parallel mode: token shift by concatenation, WKV by ``rl_statetune.wkv``) and continues from a
carried ``RecurrentState``; one token at a time is the same code with T = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from rl_statetune.decode import decode_step
from rl_statetune.wkv import DECAY_SCALE, wkv7

LN_X_EPS = 64e-5


@dataclass(frozen=True)
class RWKV7Config:
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    dim_w: int      # decay LoRA rank
    dim_a: int      # in-context learning-rate LoRA rank
    dim_v: int      # value-residual LoRA rank (layers > 0)
    dim_g: int      # gate LoRA rank
    dim_ffn: int

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def state_shape(self) -> tuple[int, int, int, int]:
        """Shape of the tunable WKV state: [L, H, N, N]."""
        return (self.n_layer, self.n_head, self.head_size, self.head_size)


@dataclass
class RecurrentState:
    """Everything the model carries between tokens, stacked over layers.

    att_x / ffn_x: [L, B, C] previous token's ln1 / ln2 output (token shift); wkv: [L, B, H, N, N] float32,
    row = value index (the `rwkv` package's ``state[3*i+1]``).
    """

    att_x: torch.Tensor
    wkv: torch.Tensor
    ffn_x: torch.Tensor
    # optional kernel-upscaled state (rl_statetune.upscale): lifted [L, B, H, N, M] and the per-layer modules
    # ``lift[i](r, kk, a, logw, s, lengths, backend) -> (o, s_new)`` that evolve it and read it out
    lifted: torch.Tensor | None = None
    lift: nn.ModuleList | None = None

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    def _with(self, fn) -> "RecurrentState":
        lifted = None if self.lifted is None else fn(self.lifted)
        return RecurrentState(fn(self.att_x), fn(self.wkv), fn(self.ffn_x), lifted, self.lift)

    def detach(self) -> "RecurrentState":
        return self._with(torch.Tensor.detach)

    def select(self, rows: torch.Tensor | list[int]) -> "RecurrentState":
        """Keep the given batch rows (for beam pruning or dropping finished sequences)."""
        rows = torch.as_tensor(rows, device=self.wkv.device)
        return self._with(lambda t: t[:, rows])


def _shift(x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """Previous token's features: [B,T,C] with x_prev [B,C] in front."""
    return torch.cat([x_prev[:, None], x[:, :-1]], dim=1)


def _last(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None:
        return x[:, -1]
    return x[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head, self.head_size = layer_id, H, N
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, C)))
        self.w1, self.w2 = nn.Parameter(torch.zeros(C, cfg.dim_w)), nn.Parameter(torch.zeros(cfg.dim_w, C))
        self.a1, self.a2 = nn.Parameter(torch.zeros(C, cfg.dim_a)), nn.Parameter(torch.zeros(cfg.dim_a, C))
        if layer_id > 0:
            self.v0 = nn.Parameter(torch.zeros(1, 1, C))
            self.v1, self.v2 = nn.Parameter(torch.zeros(C, cfg.dim_v)), nn.Parameter(torch.zeros(cfg.dim_v, C))
        self.g1, self.g2 = nn.Parameter(torch.zeros(C, cfg.dim_g)), nn.Parameter(torch.zeros(cfg.dim_g, C))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def forward(self, x, x_prev, wkv_state, v_first, lengths=None, backend="auto", lift=None, lifted=None):
        """-> (output, last token's x, new WKV state, v_first, new lifted state or None).

        ``lift`` / ``lifted``: optional upscaled-state module and its state (``RecurrentState.lift``); its
        readout is added to the WKV output before ln_x."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xx = _shift(x, x_prev) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g

        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        wdt = torch.promote_types(x.dtype, torch.float32)  # decays in float32 at least (float64 stays float64)
        logw = -DECAY_SCALE * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).to(wdt))
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

        heads = lambda t: t.reshape(B, T, H, N)  # noqa: E731
        a_h = heads(a)
        y, wkv_state = wkv7(heads(r), logw.view(B, T, H, N), heads(k), heads(v), -kk, kk * a_h,
                            s0=wkv_state, lengths=lengths, backend=backend)
        if lift is not None:
            y_up, lifted = lift(heads(r), kk, a_h, logw.view(B, T, H, N), lifted, lengths, backend)
            y = y + y_up
        y = self.ln_x(y.reshape(B * T, C).to(x.dtype)).view(B, T, C)
        y = y + ((heads(r) * heads(k) * self.r_k).sum(dim=-1, keepdim=True) * heads(v)).view(B, T, C)
        return self.output(y * g), _last(x, lengths), wkv_state, v_first, lifted


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV7Config):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, x, x_prev, lengths=None):
        kx = x + (_shift(x, x_prev) - x) * self.x_k
        return self.value(torch.relu(self.key(kx)) ** 2), _last(x, lengths)


class Block(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)


class RWKV7(nn.Module):
    """RWKV-7 language model. ``model(idx, state) -> (logits, state)``; see ``RecurrentState``."""

    def __init__(self, cfg: RWKV7Config):
        super().__init__()
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wkv_backend = "auto"
        self.decode_dtype: torch.dtype | None = None   # dtype of the one-token step's matrices (rl_statetune.decode)
        self.decode_transposed = False                  # float32 step: [in, out] copies of head / FFN key (decode.py)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def state_dtype(self) -> torch.dtype:
        """WKV states are float32 (float64 for a float64 model), whatever the weights' dtype."""
        return torch.promote_types(self.emb.weight.dtype, torch.float32)

    def zero_state(self, batch_size: int) -> RecurrentState:
        cfg, p = self.config, self.emb.weight
        L, C = cfg.n_layer, cfg.n_embd
        return RecurrentState(
            att_x=p.new_zeros(L, batch_size, C),
            wkv=torch.zeros(L, batch_size, cfg.n_head, cfg.head_size, cfg.head_size, device=p.device,
                            dtype=self.state_dtype),
            ffn_x=p.new_zeros(L, batch_size, C),
        )

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, state: RecurrentState | None = None,
                lengths: torch.Tensor | None = None):
        """idx [B,T] -> (logits [B,T,V], state after each row's last real token).

        ``lengths`` [B] marks right padding: the returned state is taken at position lengths[b]-1 and padded
        positions never change it. Logits at padded positions are meaningless.
        """
        hidden, new_state = self.hidden(idx, state, lengths)
        return self.head(hidden), new_state

    def decode(self, tokens: torch.Tensor, state: RecurrentState | None = None):
        """One token per row: tokens [B] -> (logits [B, V] float32, new state); the fast one-token step of
        ``rl_statetune.decode`` (the same numbers as ``forward`` on one token)."""
        return decode_step(self, tokens, state)

    def hidden(self, idx: torch.Tensor | None, state: RecurrentState | None = None,
               lengths: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
               layers_out: list | None = None):
        """Like ``forward`` but returns the final ln_out features [B,T,C] instead of logits.

        ``embeds`` [B,T,C]: the embedding output to start from instead of ``emb(idx)``; ``layers_out``: a list
        that receives the residual stream after ln0 and after each block (Hugging Face's ``hidden_states``)."""
        if embeds is None and idx.dim() != 2:
            raise ValueError(f"idx must be [B, T], got shape {tuple(idx.shape)}")
        B, T = idx.shape if embeds is None else embeds.shape[:2]
        if T == 0:
            raise ValueError("idx has no tokens (T = 0)")
        if state is None:
            state = self.zero_state(B)
        elif state.batch_size != B:
            raise ValueError(f"state has batch size {state.batch_size} but idx has {B}")
        x = self.emb(idx) if embeds is None else embeds
        if (state.lift is None) != (state.lifted is None):
            raise ValueError("RecurrentState.lifted and RecurrentState.lift must be given together")
        att_x, wkv, ffn_x, lifted = [], [], [], []
        v_first = None
        for i, blk in enumerate(self.blocks):
            if i == 0:
                x = blk.ln0(x)
                if layers_out is not None:
                    layers_out.append(x)
            h = blk.ln1(x)
            up = (None, None) if state.lift is None else (state.lift[i], state.lifted[i])
            out, last, s, v_first, s_up = blk.att(h, state.att_x[i], state.wkv[i], v_first, lengths,
                                                  self.wkv_backend, *up)
            x = x + out
            att_x.append(last)
            wkv.append(s)
            lifted.append(s_up)
            h = blk.ln2(x)
            out, last = blk.ffn(h, state.ffn_x[i], lengths)
            x = x + out
            ffn_x.append(last)
            if layers_out is not None:
                layers_out.append(x)
        new_lifted = None if state.lift is None else torch.stack(lifted).to(self.state_dtype)
        return self.ln_out(x), RecurrentState(torch.stack(att_x), torch.stack(wkv).to(self.state_dtype),
                                              torch.stack(ffn_x), new_lifted, state.lift)


__all__ = ["RWKV7", "RWKV7Config", "RecurrentState"]

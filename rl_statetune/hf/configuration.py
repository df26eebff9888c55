"""Hugging Face configuration for RWKV-7 in fla-hub's layout (``model_type: rwkv7``, fla's ``RWKV7Config`` key
names), so an fla-hub folder loads here and a folder saved here loads in fla.

Extra keys of ours: ``wkv_backend`` (the WKV recurrence backend) and ``base_model`` (only in a folder saved
without its weights: where ``from_pretrained`` reads the frozen weights from, "embedded" or a path)."""

from __future__ import annotations

from transformers import PretrainedConfig

from rl_statetune.model import RWKV7Config

# ours (rl_statetune.model.RWKV7Config) -> fla's name
FLA_NAMES = {"vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
             "head_size": "head_dim", "dim_w": "decay_low_rank_dim", "dim_a": "a_low_rank_dim",
             "dim_v": "v_low_rank_dim", "dim_g": "gate_low_rank_dim", "dim_ffn": "intermediate_size"}


class RWKV7HFConfig(PretrainedConfig):
    """fla's ``RWKV7Config`` keys; the project's names (``n_embd``, ``dim_w``, ...) are aliases of them."""

    model_type = "rwkv7"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {ours: fla for ours, fla in FLA_NAMES.items() if ours != fla}

    def __init__(self, vocab_size: int = 65536, hidden_size: int = 768, num_hidden_layers: int = 12,
                 head_dim: int = 64, num_heads: int | None = None, decay_low_rank_dim: int = 64,
                 a_low_rank_dim: int = 64, v_low_rank_dim: int = 32, gate_low_rank_dim: int = 128,
                 intermediate_size: int | None = None, hidden_ratio: int | None = 4, hidden_act: str = "sqrelu",
                 norm_first: bool = True, norm_bias: bool = True, norm_eps: float = 1e-5,
                 attn_mode: str = "chunk", attn: dict | None = None, fuse_norm: bool = False,
                 fuse_cross_entropy: bool = False, max_position_embeddings: int = 2048,
                 initializer_range: float = 0.02, use_cache: bool = True, wkv_backend: str = "auto",
                 base_model: str | None = None, eos_token_id: int = 0, pad_token_id: int = 0,
                 bos_token_id: int | None = 0, tie_word_embeddings: bool = False, **kwargs):
        dims = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
                "head_dim": head_dim, "decay_low_rank_dim": decay_low_rank_dim, "a_low_rank_dim": a_low_rank_dim,
                "v_low_rank_dim": v_low_rank_dim, "gate_low_rank_dim": gate_low_rank_dim,
                "intermediate_size": intermediate_size}
        for ours in [k for k in kwargs if k in FLA_NAMES]:  # the project's names as keyword arguments
            dims[FLA_NAMES[ours]] = kwargs.pop(ours)
        vocab_size, hidden_size, num_hidden_layers, head_dim, decay_low_rank_dim, a_low_rank_dim, v_low_rank_dim, \
            gate_low_rank_dim, intermediate_size = dims.values()
        if attn is not None:
            raise ValueError("hybrid RWKV-7 models (fla's `attn` layers) are not supported")
        if hidden_act != "sqrelu" or not norm_first or not norm_bias:
            raise ValueError(f"only the standard RWKV-7 is supported (hidden_act 'sqrelu', norm_first, norm_bias), "
                             f"got hidden_act={hidden_act!r}, norm_first={norm_first}, norm_bias={norm_bias}")
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.head_dim = head_dim
        self.num_heads = hidden_size // head_dim
        if num_heads is not None and num_heads != self.num_heads:
            raise ValueError(f"num_heads {num_heads} != hidden_size {hidden_size} / head_dim {head_dim}")
        self.num_attention_heads = self.num_heads
        self.decay_low_rank_dim, self.a_low_rank_dim = decay_low_rank_dim, a_low_rank_dim
        self.v_low_rank_dim, self.gate_low_rank_dim = v_low_rank_dim, gate_low_rank_dim
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size if intermediate_size is not None else hidden_size * hidden_ratio
        self.hidden_act, self.norm_first, self.norm_bias, self.norm_eps = hidden_act, norm_first, norm_bias, norm_eps
        self.attn_mode, self.attn, self.fuse_norm, self.fuse_cross_entropy = attn_mode, attn, fuse_norm, \
            fuse_cross_entropy
        self.max_position_embeddings, self.initializer_range = max_position_embeddings, initializer_range
        self.use_cache = use_cache
        self.wkv_backend, self.base_model = wkv_backend, base_model
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_rwkv(cls, cfg: RWKV7Config, **kwargs) -> "RWKV7HFConfig":
        return cls(**{fla: getattr(cfg, ours) for ours, fla in FLA_NAMES.items()}, **kwargs)

    def to_rwkv(self) -> RWKV7Config:
        return RWKV7Config(**{ours: int(getattr(self, fla)) for ours, fla in FLA_NAMES.items()})

"""Hugging Face configuration for the RWKV-7 wrapper: the dimensions of ``rl_statetune.model.RWKV7Config`` plus
where the frozen weights come from (so a saved wrapper folder holds only a config and a tuned state)."""

from __future__ import annotations

from transformers import PretrainedConfig

from rl_statetune.model import RWKV7Config

_DIMS = ("vocab_size", "n_embd", "n_layer", "head_size", "dim_w", "dim_a", "dim_v", "dim_g", "dim_ffn")


class RWKV7HFConfig(PretrainedConfig):
    """``model_type`` is ``rl_statetune_rwkv7`` (not fla's ``rwkv7``, so both can be registered side by side).

    ``base_model``: the checkpoint the frozen weights are read from (``"embedded"``, a BlinkDL file or an fla/HF
    folder, through ``rl_statetune.checkpoint.load_model``); ``wkv_backend``: the WKV recurrence backend."""

    model_type = "rl_statetune_rwkv7"

    def __init__(self, vocab_size: int = 65536, n_embd: int = 768, n_layer: int = 12, head_size: int = 64,
                 dim_w: int = 64, dim_a: int = 64, dim_v: int = 32, dim_g: int = 128, dim_ffn: int = 3072,
                 base_model: str | None = None, wkv_backend: str = "auto", eos_token_id: int = 0,
                 pad_token_id: int = 0, bos_token_id: int | None = None, **kwargs):
        self.vocab_size, self.n_embd, self.n_layer, self.head_size = vocab_size, n_embd, n_layer, head_size
        self.dim_w, self.dim_a, self.dim_v, self.dim_g, self.dim_ffn = dim_w, dim_a, dim_v, dim_g, dim_ffn
        self.base_model, self.wkv_backend = base_model, wkv_backend
        # names the rest of the Hugging Face stack reads
        self.hidden_size, self.num_hidden_layers = n_embd, n_layer
        self.num_attention_heads = n_embd // head_size
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id, **kwargs)

    @classmethod
    def from_rwkv(cls, cfg: RWKV7Config, **kwargs) -> "RWKV7HFConfig":
        return cls(**{k: getattr(cfg, k) for k in _DIMS}, **kwargs)

    def to_rwkv(self) -> RWKV7Config:
        return RWKV7Config(**{k: int(getattr(self, k)) for k in _DIMS})

"""The Hugging Face face of rl_statetune: ``RWKV7ForCausalLM`` (a ``PreTrainedModel`` + ``GenerationMixin`` that
calls the project's RWKV-7), ``RWKVWorldTokenizer`` (a ``PreTrainedTokenizer`` on the world vocabulary), and
TRL-based tuning (``rl_statetune.hf.sft``, ``rl_statetune.hf.grpo``; they need the ``hf`` extra: trl, peft).
See docs/hf.md."""

from rl_statetune.hf.configuration import RWKV7HFConfig
from rl_statetune.hf.modeling import RWKV7Cache, RWKV7ForCausalLM, RWKV7Model
from rl_statetune.hf.tokenization import RWKVWorldTokenizer, world_tokenizer


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoTokenizer`` know ``rl_statetune_rwkv7``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    AutoConfig.register(RWKV7HFConfig.model_type, RWKV7HFConfig, exist_ok=True)
    AutoModel.register(RWKV7HFConfig, RWKV7Model, exist_ok=True)
    AutoModelForCausalLM.register(RWKV7HFConfig, RWKV7ForCausalLM, exist_ok=True)
    AutoTokenizer.register(RWKV7HFConfig, slow_tokenizer_class=RWKVWorldTokenizer, exist_ok=True)


__all__ = ["RWKV7HFConfig", "RWKV7Cache", "RWKV7ForCausalLM", "RWKV7Model", "RWKVWorldTokenizer",
           "world_tokenizer", "register_auto_classes"]

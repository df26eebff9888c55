"""The ``rl_statetune`` model for lm-evaluation-harness: a frozen RWKV-7 starting from its own, a tuned or an
upscaled initial state.

    lm_eval --model rl_statetune --model_args pretrained=embedded,state=runs/answer_format/state.pth \\
        --tasks rl_statetune/eval/tasks/arc_challenge_local.yaml

lm-eval builds the prompts, splits, few-shot examples, metrics and filters; this class only answers its three
request types. Context/continuation tokenisation is lm-eval's own (``TemplateLM``): trailing context whitespace
moves to the continuation, an empty context becomes the end-of-text token.

**The recurrent state as a prefix cache** (``prefix_cache=True``, the default). An RWKV state after a prefix is
all the model needs to continue it, so requests that share tokens run them once:

* every continuation of one context (the choices of a multiple-choice question) starts from a copy
  (``RecurrentState.select``) of the context's state; single-token continuations (MMLU's `` A``..`` D``) need no
  forward of their own: the context's last logits score them;
* contexts are processed in lexicographic token order, batch by batch; the longest common token prefix of a
  batch (a few-shot prompt's shared examples, an MMLU subject's description) runs once, and the batch continues
  from copies of its state (the last such prefix state is kept for the next batch).

``prefix_cache=False`` runs each request as ``context + continuation[:-1]`` from the initial state, the way
lm-eval's ``hf`` model does. Both give the same scores up to float rounding (tests), the cache is faster
(``benchmarks/eval_prefix_cache.py``). Logits are only computed at the positions that are scored (the hidden
states of a long context never meet the vocabulary-sized head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from tqdm.auto import tqdm

from rl_statetune.lm import InitStateFn, initial_state, model_device, pad_right

NAME = "rl_statetune"


class NonFiniteScoreError(ValueError):
    """The model produced NaN/inf log-probabilities (e.g. a broken tuned state): scoring would be meaningless."""


class ByteTokenizer:
    """Byte-level vocabulary (token id = byte value), as the 256-token RWKV-7 test models use; id 0 ends text."""

    eos_id = 0
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors=errors)


def tokenizer_for(model: Any):
    """The world tokenizer for 65536-token models, bytes for 256-token ones."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab == 256:
        return ByteTokenizer()
    from rl_statetune.tokenizer import WorldTokenizer

    return WorldTokenizer()


def load_init_state(model: Any, path: str | Path | None, device: str | torch.device = "cpu") -> InitStateFn | None:
    """``batch_size -> RecurrentState`` for a tuned/upscaled state file (None: the model's own zero state).
    Raises ValueError naming the file when it does not fit the model, is corrupt or holds NaN/inf."""
    if path is None or str(path) in ("", "none", "None"):
        return None
    from rl_statetune.state import initial_state_fn
    from rl_statetune.upscale import load_tunable

    module = load_tunable(path, model.config).to(device)   # refuses NaN / inf and states of another model size
    module.requires_grad_(False)
    return initial_state_fn(model, module)


def _batch_size(value: Any) -> int:
    if value is None:
        return 8
    if str(value).startswith("auto"):
        raise ValueError(f"batch_size={value} is not supported by the rl_statetune model (a recurrent state does not "
                         "grow with the context, so there is no largest batch to search for): give a number")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size must be a whole number, got {value!r}") from None
    if n < 1:
        raise ValueError(f"batch_size must be >= 1, got {value}")
    return n


# the generation settings generate_until honours; lm-eval's other keys would be silently ignored, so they are refused
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p")
# RWKV's chat format (the World models' "User: ...\n\nAssistant:"), as a Jinja template for lm-eval's fingerprint
CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
CHAT_TEMPLATE = ("{% for m in messages %}{{ {'system': 'System', 'user': 'User', 'assistant': 'Assistant'}[m['role']] }}"
                 ": {{ m['content'] | trim }}\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def chat_prompt(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """``[{"role", "content"}]`` -> ``"User: ...\n\nAssistant:"`` (RWKV's chat format; roles system/user/assistant)."""
    parts = []
    for m in messages:
        if m.get("role") not in CHAT_ROLES:
            raise ValueError(f"chat role {m.get('role')!r} is not one of {', '.join(CHAT_ROLES)}")
        parts.append(f"{CHAT_ROLES[m['role']]}: {str(m['content']).strip()}\n\n")
    return "".join(parts) + ("Assistant:" if add_generation_prompt else "")


BLOCK = 64  # tokens: a shared prefix at least this long (a few-shot block) is worth its own batches


def prefix_batches(contexts: Sequence[Sequence[int]], batch_size: int) -> list[list[Sequence[int]]]:
    """Sorted contexts -> batches of at most ``batch_size`` that do not straddle the end of a shared block.

    Between neighbours ``i`` and ``i + 1`` the shared prefix ``lcp[i]`` is long inside a block (MMLU: one
    subject's description and 5 examples) and short where the next block starts. A batch ends there, so every
    batch's own shared prefix is the block, which then runs once (not once per question, as in a batch that mixes
    two subjects). A break is placed where ``lcp[i]`` is under half of a neighbouring ``lcp`` of >= ``BLOCK``
    tokens; contexts without such blocks (ARC 0-shot) are cut only every ``batch_size``."""
    lcp = [_common_prefix(a, b) for a, b in zip(contexts, contexts[1:])]
    batches: list[list[Sequence[int]]] = []
    group: list[Sequence[int]] = []
    for i, c in enumerate(contexts):
        if group:
            here = lcp[i - 1]
            around = max(lcp[i - 2] if i >= 2 else 0, lcp[i] if i < len(lcp) else 0)
            if len(group) == batch_size or (around >= BLOCK and here < around // 2):
                batches.append(group)
                group = []
        group.append(c)
    if group:
        batches.append(group)
    return batches


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@register_model(NAME, "rwkv7_state")
class RWKVStateLM(TemplateLM):
    """lm-eval model for RWKV-7 with an optional tuned state.

    ``--model_args``: ``pretrained`` (``embedded``, BlinkDL .pth/.safetensors, fla/HF folder), ``state`` (state file),
    ``batch_size``, ``device``, ``dtype`` (float32), ``backend`` (WKV backend, auto), ``prefix_cache`` (true),
    ``max_gen_toks`` (256), ``min_shared_prefix`` (tokens, 8). From Python, ``model=``/``tokenizer=``/
    ``init_state_fn=`` pass objects instead of paths.
    """

    def __init__(self, pretrained: str = "embedded", state: str | None = None, batch_size: Any = 8,
                 device: str = "cpu", dtype: str = "float32", backend: str = "auto", prefix_cache: Any = True,
                 max_gen_toks: int = 256, min_shared_prefix: int = 8, progress: Any = True, *, model: Any = None, tokenizer: Any = None,
                 init_state_fn: InitStateFn | None = None, max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for the rl_statetune model: {', '.join(sorted(unknown))} (known: "
                             "pretrained, state, batch_size, device, dtype, backend, prefix_cache, max_gen_toks, "
                             "min_shared_prefix, progress)")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"  # lm_eval's CLI passes its default device ("cuda"), also on CPU-only machines
        if model is None:
            from rl_statetune.checkpoint import load_model

            model = load_model(pretrained, dtype=dtype, device=device, backend=backend)
            if init_state_fn is None:
                init_state_fn = load_init_state(model, state, device)
        self.model = model.eval() if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer if tokenizer is not None else tokenizer_for(model)
        self.init_state_fn = init_state_fn
        self.pretrained, self.state_path = str(pretrained), None if state is None else str(state)
        self._batch_size = _batch_size(batch_size)
        self.prefix_cache = str(prefix_cache).lower() not in ("false", "0", "no", "off")
        self._max_gen_toks = int(max_gen_toks)
        self.min_shared_prefix = int(min_shared_prefix)
        self.progress = str(progress).lower() not in ("false", "0", "no", "off")
        self._device = model_device(self.model)
        self.stats = {"forward_tokens": 0, "forwards": 0}

    # -- lm-eval plumbing ------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tokenizer.decode(list(tokens))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template``: RWKV's ``User: ...\\n\\nAssistant:`` format (``chat_prompt``)."""
        return chat_prompt(chat_history, add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        if isinstance(chat_template, str) and chat_template not in ("rwkv", "default"):
            raise ValueError(f"chat template {chat_template!r}: the rl_statetune model has one, RWKV's "
                             "(--apply_chat_template or --apply_chat_template rwkv)")
        return CHAT_TEMPLATE

    def get_model_info(self) -> dict:
        return {"model": self.pretrained, "state": self.state_path, "prefix_cache": self.prefix_cache}

    # -- forward helpers -------------------------------------------------------------------------------------
    def _hidden(self, idx: torch.Tensor, state: Any, lengths: torch.Tensor | None):
        """(features or logits [B, T, *], new state, whether the first is features that still need the head)."""
        self.stats["forwards"] += 1
        self.stats["forward_tokens"] += int(lengths.sum()) if lengths is not None else idx.numel()
        hidden = getattr(self.model, "hidden", None)
        if callable(hidden) and hasattr(self.model, "head"):
            h, s = hidden(idx, state, lengths)
            return h, s, True
        logits, s = self.model(idx, state, lengths)
        return logits, s, False

    def _logprobs(self, x: torch.Tensor, is_hidden: bool) -> torch.Tensor:
        logits = self.model.head(x) if is_hidden else x
        return logits.float().log_softmax(-1)

    def _start_state(self, n: int) -> Any:
        return initial_state(self.init_state_fn, n)

    @staticmethod
    def _finite(value: float, what: str) -> float:
        if not math.isfinite(value):
            raise NonFiniteScoreError(f"{what}: log-likelihood is {value}; the model or its initial state produces "
                                      "NaN/inf (check the state file with torch.isfinite)")
        return value

    # -- loglikelihood ---------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        toks = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        for i, (ctx, cont) in enumerate(toks):
            if not ctx or not cont:
                raise ValueError(f"request {i} ({requests[i][0]!r}) has an empty context or continuation")
        with tqdm(total=len(requests), desc="rl_statetune loglikelihood", disable=disable_tqdm or not self.progress,
                  leave=False) as bar:
            if self.prefix_cache:
                self._score_shared(toks, out, bar)
            else:
                self._score_plain(toks, out, bar)
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out  # type: ignore[return-value]

    def _score_plain(self, toks, out, bar) -> None:
        """Each request alone: ``context + continuation[:-1]`` from the initial state (no sharing), longest first
        (lm-eval's ``Collator``, as its ``hf`` model orders them)."""
        coll = Collator(list(enumerate(toks)), sort_fn=lambda r: (-len(r[1][0]) - len(r[1][1]), tuple(r[1][0])))
        for batch in coll.get_batched(n=self.batch_size):
            rows = [i for i, _ in batch]
            idx, lengths = pad_right([toks[i][0] + toks[i][1][:-1] for i in rows], 0, self._device)
            x, _, is_h = self._hidden(idx, self._start_state(len(rows)), lengths)
            for b, i in enumerate(rows):
                ctx, cont = toks[i]
                lp = self._logprobs(x[b, len(ctx) - 1:len(ctx) - 1 + len(cont)], is_h)
                out[i] = self._pack(lp, cont, i)
            bar.update(len(rows))

    def _pack(self, lp: torch.Tensor, cont: list[int], i: int) -> tuple[float, bool]:
        tgt = torch.as_tensor(cont, device=lp.device)
        value = float(lp.gather(-1, tgt[:, None]).double().sum())
        return self._finite(value, f"request {i}"), bool((lp.argmax(-1) == tgt).all())

    def _score_shared(self, toks, out, bar) -> None:
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(toks):
            by_ctx.setdefault(tuple(ctx), []).append(i)
        contexts = sorted(by_ctx)  # lexicographic: neighbours share the longest prefixes
        cached: tuple[tuple[int, ...], Any] | None = None  # (prefix tokens, state after them, batch 1)
        for group in prefix_batches(contexts, self.batch_size):
            # the longest prefix shared by the whole (sorted) group, leaving >= 1 token of each context to run
            p = min(_common_prefix(group[0], group[-1]), min(len(c) for c in group) - 1)
            if p >= self.min_shared_prefix:
                prefix = group[0][:p]
                if cached is None or cached[0] != prefix:
                    idx, lengths = pad_right([list(prefix)], 0, self._device)
                    _, st, _ = self._hidden(idx, self._start_state(1), lengths)
                    cached = (prefix, st)
                start = cached[1].select([0] * len(group))
            else:
                p, start = 0, self._start_state(len(group))
            idx, lengths = pad_right([list(c[p:]) for c in group], 0, self._device)
            x, state, is_h = self._hidden(idx, start, lengths)
            last = self._logprobs(x[torch.arange(len(group), device=x.device), lengths.to(x.device) - 1], is_h)
            rest: list[tuple[int, int]] = []  # (request, row) with more than one continuation token
            for row, ctx in enumerate(group):
                for i in by_ctx[ctx]:
                    cont = toks[i][1]
                    first = float(last[row, cont[0]])
                    out[i] = (first, int(last[row].argmax()) == cont[0])
                    if len(cont) > 1:
                        rest.append((i, row))
                    else:
                        self._finite(first, f"request {i}")
                        bar.update(1)
            rest.sort(key=lambda r: -len(toks[r[0]][1]))
            for r0 in range(0, len(rest), self.batch_size):
                sub = rest[r0:r0 + self.batch_size]
                conts = [toks[i][1] for i, _ in sub]
                idx, lengths = pad_right([c[:-1] for c in conts], 0, self._device)
                xs, _, is_h = self._hidden(idx, state.select([row for _, row in sub]), lengths)
                for b, (i, _) in enumerate(sub):
                    cont = conts[b]
                    lp = self._logprobs(xs[b, :len(cont) - 1], is_h)
                    tail, greedy = self._pack(lp, cont[1:], i)
                    first, first_greedy = out[i]
                    out[i] = (self._finite(first + tail, f"request {i}"), first_greedy and greedy)
                bar.update(len(sub))

    # -- loglikelihood_rolling -------------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihood after the end-of-text token; RWKV has no context window, so no windows."""
        seqs = [[self.eot_token_id] + self.tok_encode(req.args[0]) for req in requests]
        out = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for s in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm or not self.progress, leave=False,
                      desc="rl_statetune loglikelihood_rolling"):
            rows = order[s:s + self.batch_size]
            idx, lengths = pad_right([seqs[i][:-1] if len(seqs[i]) > 1 else seqs[i] for i in rows], 0, self._device)
            x, _, is_h = self._hidden(idx, self._start_state(len(rows)), lengths)
            for b, i in enumerate(rows):
                tgt = seqs[i][1:]
                if not tgt:
                    continue
                total = 0.0
                for c in range(0, len(tgt), 1024):  # bounded [chunk, vocab] logits
                    lp = self._logprobs(x[b, c:c + 1024][: len(tgt) - c], is_h)
                    total += self._pack(lp, tgt[c:c + 1024], i)[0]
                out[i] = total
                self.cache_hook.add_partial("loglikelihood_rolling", (requests[i].args[0],), total)
        return out

    # -- generate_until --------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) decoding until a stop string, via ``rl_statetune.generation``.
        Requests are grouped by their generation settings with lm-eval's ``Collator``; ``until`` and the
        settings are read by lm-eval's ``normalize_gen_kwargs`` / ``handle_stop_sequences``; a setting outside
        ``GEN_KWARGS`` is refused (it would otherwise be ignored)."""
        from rl_statetune.generation import generate

        eos = self.tok_decode([self.eot_token_id]) or None
        settings = []
        for req in requests:
            kw = normalize_gen_kwargs(dict(req.args[1] or {}), self.max_gen_toks)
            unknown = sorted(set(kw) - set(GEN_KWARGS))
            if unknown:
                raise ValueError(f"generation settings {unknown} are not supported by the rl_statetune model "
                                 f"(supported: {', '.join(GEN_KWARGS)})")
            settings.append({"until": handle_stop_sequences(kw.get("until"), eos), "max_gen_toks": kw["max_gen_toks"],
                             "temperature": float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                             "top_p": float(kw.get("top_p", 1.0) or 1.0)})
        items = [(i, req.args[0], settings[i]) for i, req in enumerate(requests)]
        coll = Collator(items, sort_fn=lambda r: -len(self.tok_encode(r[1])), group_fn=lambda r: r[2],
                        group_by="gen_kwargs")
        out = [""] * len(requests)
        for batch in coll.get_batched(n=0):  # one batch per setting; generate() batches by batch_size itself
            st = batch[0][2]
            texts = generate(self.model, self.tokenizer, [ctx for _, ctx, _ in batch], st["max_gen_toks"],
                             init_state=self.init_state_fn, stop=tuple(s for s in st["until"] if s),
                             temperature=st["temperature"], top_p=st["top_p"], batch_size=self.batch_size,
                             progress=self.progress and not disable_tqdm, desc="rl_statetune generate")
            for (i, _, _), text in zip(batch, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

"""Self-guidance: the learner's own frozen model, prompted with a header (the reasoning task's ``Mode: reason``),
serves as the guide. No second model: the state learns to do without the header what the header makes the
frozen model do, and the verifier can then push beyond it.

It implements the guide interface (``rl_statetune_guides.Guide``): ``generate`` decodes greedily or by sampling
from the frozen model (no tuned state) after ``header + prompt``; ``score`` is one teacher-forced forward over
``header + prompt + continuation``, returning the model's log-probability of each RWKV token of the continuation
with its character span, so it plugs into the same text-level alignment as any other guide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rl_statetune_guides import Guide, ScoredText
from rl_statetune_guides.base import check_generate_args, check_score_args, warn_no_top_k

from rl_statetune.generation import generate
from rl_statetune.lm import pad_right
from rl_statetune.model import RWKV7
from rl_statetune.rl.align import decode_with_spans


class SelfGuide(Guide):
    """The frozen ``model`` with ``header`` before every prompt. ``stop``: generation ends at these strings."""

    supports_scoring = True
    supports_top_k = False

    def __init__(self, model: RWKV7, tokenizer, header: str = "Mode: reason\n", stop: Sequence[str] = ("\n",),
                 batch_size: int = 64):
        self.model, self.tok, self.header = model, tokenizer, header
        self.stop, self.batch_size = tuple(stop), batch_size
        self.device = model.emb.weight.device

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        prompts = check_generate_args(prompts, max_tokens, temperature)
        return generate(self.model, self.tok, [self.header + p for p in prompts], max_tokens, stop=self.stop,
                        temperature=temperature, batch_size=self.batch_size)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        warn_no_top_k(self, top_k)
        out: list[ScoredText | None] = [None] * len(prompts)
        for lo in range(0, len(prompts), self.batch_size):
            rows = range(lo, min(lo + self.batch_size, len(prompts)))
            heads = [self.tok.encode(self.header + prompts[i]) or [self.tok.eos_id] for i in rows]
            conts = [self.tok.encode(continuations[i]) for i in rows]
            idx, lengths = pad_right([h + c for h, c in zip(heads, conts)], 0, self.device)
            logits, _ = self.model(idx, None, lengths=lengths)
            logp = torch.log_softmax(logits.float(), dim=-1)
            for j, i in enumerate(rows):
                h, c = len(heads[j]), conts[j]
                if not c:
                    out[i] = ScoredText("", (), (), ())
                    continue
                pos = torch.arange(h - 1, h - 1 + len(c), device=self.device)
                lps = logp[j, pos, torch.tensor(c, device=self.device)].clamp_max(0.0).tolist()
                text, spans = decode_with_spans(self.tok, c)
                out[i] = ScoredText(text, tuple(text[a:b] for a, b in spans), tuple(spans), tuple(lps))
        return out  # type: ignore[return-value]

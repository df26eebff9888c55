"""GSM8K: greedy generation, answer extraction and exact match, with lm-evaluation-harness's two filters.

* strict-match: the first ``#### N`` in the output;
* flexible-extract: the last number-like span in the output.

Both the extracted answer and the reference (the dataset's answer, whose final line is ``#### N``) are then
normalised the harness way — drop commas, dollar signs, everything up to ``#### `` and one trailing period,
lower-case — and compared as strings (so ``3.50`` does not match ``3.5``, exactly as in the harness).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rl_statetune.lm import InitStateFn, Tokenizer
from rl_statetune.eval.generate import greedy_generate
from rl_statetune.eval.metrics import aggregate
from rl_statetune.eval.tasks import GSM8K, GenerationDoc

INVALID = "[invalid]"
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))
STRICT_METRIC, FLEXIBLE_METRIC = GSM8K.metrics


def _pick(matches: list, which: int) -> str:
    if not matches:
        return INVALID
    m = matches[which]
    if isinstance(m, tuple):  # several groups: the one that matched
        m = next((g for g in m if g), "")
    return m.strip()


def extract_strict(text: str) -> str:
    """The number after the first ``#### `` (raw, e.g. ``"1,000"``), or ``"[invalid]"``."""
    return _pick(STRICT.findall(text), 0)


def extract_flexible(text: str) -> str:
    """The last number-like span (may carry ``$``, commas, a trailing period), or ``"[invalid]"``."""
    return _pick(FLEXIBLE.findall(text), -1)


def normalize(text: str) -> str:
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def reference_answer(answer: str) -> str:
    """Normalised final answer of a GSM8K reference solution (``"... #### 1,000"`` -> ``"1000"``)."""
    if "####" not in answer:
        raise ValueError(f"gsm8k reference has no '#### N' final line: {answer[-80:]!r}")
    return normalize(answer)


def match(output: str, reference: str) -> dict[str, float]:
    """Per-output strict / flexible exact match against a reference solution."""
    ref = reference_answer(reference)
    return {STRICT_METRIC: float(normalize(extract_strict(output)) == ref),
            FLEXIBLE_METRIC: float(normalize(extract_flexible(output)) == ref)}


def score(model: Any, tokenizer: Tokenizer, docs: Sequence[GenerationDoc],
          init_state_fn: InitStateFn | None = None, *, batch_size: int = 8, max_new_tokens: int = 256,
          stop: Sequence[str] = GSM8K.stop, progress: bool = True) -> dict[str, Any]:
    """Generate greedily for every doc and score; returns ``{"metrics": {...}, "samples": [...]}``."""
    if not docs:
        raise ValueError("no documents to score")
    outputs = greedy_generate(model, tokenizer, [d.prompt for d in docs], max_new_tokens=max_new_tokens,
                              stop=stop, init_state_fn=init_state_fn, batch_size=batch_size, progress=progress,
                              desc="gsm8k")
    per_doc, samples = [], []
    for d, out in zip(docs, outputs):
        values = match(out, d.reference)
        per_doc.append(values)
        samples.append({"doc_id": d.doc_id, "output": out, "strict": extract_strict(out),
                        "flexible": extract_flexible(out), "reference": reference_answer(d.reference), **values})
    return {"metrics": aggregate(per_doc, GSM8K.metrics), "samples": samples}

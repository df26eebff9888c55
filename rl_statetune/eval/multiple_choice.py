"""Multiple-choice scoring by summed continuation log-likelihood (acc) and its length-normalised form (acc_norm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rl_statetune.lm import InitStateFn, Tokenizer
from rl_statetune.eval.loglikelihood import encode_pair, loglikelihoods
from rl_statetune.eval.metrics import aggregate
from rl_statetune.eval.tasks import MultipleChoiceDoc


def _argmax(xs: Sequence[float]) -> int:
    """First index of the maximum (numpy's tie rule)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def _length(text: str, unit: str) -> int:
    if unit == "chars":
        n = len(text)
    elif unit == "bytes":
        n = len(text.encode("utf-8"))
    else:
        raise ValueError(f"length unit must be 'chars' or 'bytes', got {unit!r}")
    return max(n, 1)


def score(model: Any, tokenizer: Tokenizer, docs: Sequence[MultipleChoiceDoc],
          init_state_fn: InitStateFn | None = None, *, batch_size: int = 8, length_unit: str = "chars",
          metrics: Sequence[str] = ("acc", "acc_norm"), progress: bool = True,
          desc: str = "multiple choice") -> dict[str, Any]:
    """Score multiple-choice docs; returns ``{"metrics": {...}, "samples": [...]}``.

    acc: argmax of summed log-likelihood is the gold choice; acc_norm: argmax of log-likelihood divided by the
    length of the choice text (characters, as lm-evaluation-harness; ``length_unit="bytes"`` for bytes).
    """
    if not docs:
        raise ValueError("no documents to score")
    requests = [encode_pair(tokenizer, ctx, cont) for d in docs for ctx, cont in zip(d.contexts, d.continuations)]
    lls = loglikelihoods(model, requests, init_state_fn, batch_size=batch_size, progress=progress, desc=desc)
    samples, per_doc, k = [], [], 0
    for d in docs:
        ll = lls[k:k + len(d.contexts)]
        k += len(d.contexts)
        norm = [x / _length(t, length_unit) for x, t in zip(ll, d.norm_texts)]
        pred, pred_norm = _argmax(ll), _argmax(norm)
        values = {"acc": float(pred == d.gold), "acc_norm": float(pred_norm == d.gold)}
        per_doc.append(values)
        samples.append({"doc_id": d.doc_id, "gold": d.gold, "loglikelihoods": ll, "pred": pred,
                        "pred_norm": pred_norm, **{m: values[m] for m in metrics}})
    return {"metrics": aggregate(per_doc, metrics), "samples": samples}

"""Guide whose text is a dataset's reference rationale (e.g. GSM8K ``answer``), looked up by prompt.

There is no model behind it: :meth:`DatasetGuide.generate` ignores ``max_tokens`` and ``temperature``
and returns the stored rationale verbatim; :meth:`DatasetGuide.score` raises
:class:`~rl_statetune_guides.errors.GuideScoringUnsupported` unless ``score_logprob`` is configured, in
which case every whitespace-delimited piece of the continuation gets that constant log-prob (``0.0``
treats the reference as certain). Use it with token-match rewards, not guide-logprob rewards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Guide, ScoredText, check_generate_args, check_score_args, warn_no_top_k
from .config import DatasetOptions
from .errors import GuideScoringUnsupported
from .text import scored_text

__all__ = ["DatasetGuide", "load_rows"]

_CALC = re.compile(r"<<[^<>]*>>")
_PIECE = re.compile(r"\s*\S+|\s+")
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(options: DatasetOptions) -> Iterable[Mapping[str, Any]]:
    """Rows of the configured local file or hub dataset split, through ``datasets``."""
    import datasets

    if options.path is not None:
        path = Path(options.path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset guide file not found: {path}")
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"dataset guide file {path}: unsupported suffix {path.suffix!r}; use {sorted(_FORMATS)}")
        return datasets.load_dataset(fmt, data_files={"data": str(path)}, split="data")
    return datasets.load_dataset(options.hf_name, options.hf_config, split=options.split)


class DatasetGuide(Guide):
    """Prompt -> reference rationale lookup. Prompts match after stripping surrounding whitespace."""

    def __init__(self, options: DatasetOptions, rows: Iterable[Mapping[str, Any]] | None = None):
        self.options = options
        self.supports_scoring = options.score_logprob is not None
        self.table: dict[str, str] = {}
        for i, row in enumerate(load_rows(options) if rows is None else rows):
            for field in (options.prompt_field, options.target_field):
                if field not in row:
                    raise KeyError(f"dataset guide row {i} has no field {field!r} (fields: {sorted(row)})")
            key, target = str(row[options.prompt_field]).strip(), str(row[options.target_field])
            if options.strip_calculator_annotations:
                target = _CALC.sub("", target)
            if key in self.table and self.table[key] != target and options.on_duplicate == "error":
                raise ValueError(f"dataset guide: prompt of row {i} repeats an earlier prompt with another target")
            self.table.setdefault(key, target)
        if not self.table:
            raise ValueError("dataset guide: the dataset has no rows")

    def __len__(self) -> int:
        return len(self.table)

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        out = []
        for i, p in enumerate(check_generate_args(prompts, max_tokens, temperature)):
            target = self.table.get(p.strip())
            if target is None:
                if self.options.on_missing == "error":
                    raise KeyError(f"dataset guide has no reference for prompt {i}: {p[:80]!r}")
                target = ""
            out.append(target)
        return out

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        warn_no_top_k(self, top_k)
        if self.options.score_logprob is None:
            raise GuideScoringUnsupported(
                "the dataset guide has no model to score text with; use a match-type reward, or set "
                "options.score_logprob to return a constant log-prob per piece"
            )
        out = []
        for c in continuations:
            spans = [m.span() for m in _PIECE.finditer(c)]
            out.append(scored_text(c, spans, [self.options.score_logprob] * len(spans)))
        return out

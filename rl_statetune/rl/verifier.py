"""The task's own answer check, as a reward and as a filter: is the final answer of a completion right?

* synthetic tasks: the number in the completion's first line, in the task's answer format
  (``synthetic.extract_answer``, the held-out rule), equals the problem's answer;
* jsonl tasks (GSM8K style): the last ``#### N`` of the completion equals the example's ``answer`` field, or,
  where that is empty, the ``#### N`` of its reference target (commas and a trailing ``.0`` ignored).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from rl_statetune.config import DataConfig
from rl_statetune.synthetic import extract_answer

HASH_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")

Check = Callable[[str, str], bool]   # (completion after the prompt, reference answer) -> right?


def hash_number(text: str) -> str | None:
    """The last ``#### N`` number of ``text`` in a canonical form ('1,234.0' -> '1234'); None if there is none."""
    found = HASH_ANSWER.findall(text)
    return None if not found else canonical_number(found[-1])


def canonical_number(s: str) -> str:
    s = s.replace(",", "").strip()
    if "." in s:
        s = s.rstrip("0").rstrip(".") or "0"
    return s


def make_check(data: DataConfig) -> Check:
    """The answer check of ``data``'s task."""
    if data.task == "synthetic":
        fmt = data.target_format

        def synthetic(text: str, answer: str) -> bool:
            return answer != "" and extract_answer(text, fmt) == int(answer)

        return synthetic

    def gsm8k(text: str, answer: str) -> bool:
        got = hash_number(text)
        return got is not None and got == canonical_number(answer)

    return gsm8k


def reference_answer(answer: str, target: str) -> str:
    """What a completion is checked against: the example's ``answer``, else its target's ``#### N`` ('' if none:
    then no completion is right)."""
    return answer or hash_number(target) or ""

"""A synthetic corpus of arithmetic word problems with step-by-step solutions in several answer formats.

The embedded model is pretrained on it with the answer format chosen at random per problem (announced by a header
line in half of the documents), so the frozen model solves problems but, without a header, ends its solution in
any of the formats. State tuning then has something real to change: make the model use one target format with no
header in the prompt (and keep the arithmetic right), measured on held-out problems.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Ava", "Noah", "Emma"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "marbles", "stamps", "shells", "cookies", "stickers"]
GAINS = ["buys {n} more", "finds {n} more", "gets {n} more", "is given {n} more"]
LOSSES = ["gives away {n}", "loses {n}", "sells {n}", "uses {n}"]

# answer formats: name -> (template, regex that extracts the number)
FORMATS: dict[str, tuple[str, str]] = {
    "answer": ("Answer: {a}", r"Answer: (-?\d+)$"),
    "hash": ("#### {a}", r"#### (-?\d+)$"),
    "sentence": ("The answer is {a}.", r"The answer is (-?\d+)\.$"),
}


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[str, ...]
    answer: int

    def prompt(self) -> str:
        return f"Q: {self.question}\nA:"

    def solution(self, fmt: str) -> str:
        """The text after the prompt: ' 3 + 4 = 7. 7 - 2 = 5. #### 5\\n'."""
        template = FORMATS[fmt][0]
        return " " + " ".join(self.steps) + " " + template.format(a=self.answer) + "\n"


def make_problem(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(1, 9)
    parts, steps, total = [f"{name} has {start} {item}"], [], start
    for _ in range(rng.choice([0, 1, 1, 2])):  # 0 steps: pure recall, which teaches copying the counts
        if total > 1 and rng.random() < 0.5:
            n = rng.randint(1, total - 1)
            parts.append(rng.choice(LOSSES).format(n=n))
            steps.append(f"{total} - {n} = {total - n}.")
            total -= n
        else:
            n = rng.randint(1, 9)
            parts.append(rng.choice(GAINS).format(n=n))
            steps.append(f"{total} + {n} = {total + n}.")
            total += n
    if not steps:
        steps.append(f"{name} has {start}.")
    body = parts[0] + ", then " + ", then ".join(parts[1:]) if len(parts) > 2 else " and ".join(parts)
    question = f"{body}. How many {item} does {name} have?"
    return Problem(question, tuple(steps), total)


def problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(n)]


def format_header(fmt: str) -> str:
    return f"Format: {fmt}\n"


def corpus_documents(n: int, seed: int, header_rate: float = 0.5) -> list[str]:
    """Pretraining documents: a problem and its solution in a uniformly random format. A ``header_rate``
    share of them announce the format first (``Format: hash``), so the model learns to carry the format
    through its recurrent state to the end of the solution: what a tuned initial state can then supply."""
    rng = random.Random(seed)
    names = list(FORMATS)
    docs = []
    for _ in range(n):
        p, fmt = make_problem(rng), rng.choice(names)
        head = format_header(fmt) if rng.random() < header_rate else ""
        docs.append(head + p.prompt() + p.solution(fmt))
    return docs


def extract_answer(text: str, fmt: str) -> int | None:
    """The number in ``text``'s first line if it ends in format ``fmt``; None otherwise."""
    line = text.strip().split("\n")[0].strip()
    m = re.search(FORMATS[fmt][1], line)
    return int(m.group(1)) if m else None


def detect_format(text: str) -> str | None:
    line = text.strip().split("\n")[0].strip()
    for name, (_, pattern) in FORMATS.items():
        if re.search(pattern, line):
            return name
    return None


# --- the reasoning task: harder problems, answered directly or step by step --------------------------------------
#
# A problem names three to five two-digit values and only then asks for a sum and difference of some of them, in
# an order of its own: "Q: b = 23, d = 14, f = 9, g = 12. What is f + b - d + g?". A document's solution is either
# *direct* (" The answer is 30.") or *reasoning*: the values substituted, then one operation at a time
# (" f + b - d + g = 9 + 23 - 14 + 12. 9 + 23 = 32. 32 - 14 = 18. 18 + 12 = 30. The answer is 30."), both on one
# line and ending in the "sentence" format. A share of the documents name the mode in a header line
# (``Mode: reason``); documents without a header are always direct. So the frozen model, prompted with no header,
# answers at once; with the reasoning header it works step by step. The aim (GitHub issue 12): direct weak,
# reasoning strong, and a tuned initial state that switches reasoning on with no header (state-based test-time
# scaling: more generated tokens, higher accuracy, the weights untouched).
#
# Why the values come first: in the first version of this task every operation sat next to its number ("has 23,
# then loses 9, ..."), so a recurrent model kept the running total in its state while it read the question and
# answered directly as well as step by step. Here nothing can be computed before the question: a direct answer
# must look up two to four values and add them in the few tokens of the question, while the reasoning mode writes
# each lookup and each two-number operation out.

MODES = ("direct", "reason")
REASON_MAX_TOTAL = 99
VARIABLES = "abcdefghkmnpqrstuvwxyz"


@dataclass(frozen=True)
class ReasoningProblem:
    question: str
    steps: tuple[str, ...]
    answer: int

    def prompt(self, mode: str | None = None) -> str:
        """``mode`` None: no header (the model's default, direct); "direct"/"reason": that header first."""
        return (mode_header(mode) if mode else "") + f"Q: {self.question}\nA:"

    def solution(self, mode: str = "reason") -> str:
        """The text after the prompt, one line: the steps (reason mode only), then 'The answer is N.'."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        steps = " ".join(self.steps) + " " if mode == "reason" else ""
        return " " + steps + FORMATS["sentence"][0].format(a=self.answer) + "\n"


def mode_header(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return f"Mode: {mode}\n"


def make_reasoning_problem(rng: random.Random) -> ReasoningProblem:
    """3-5 named values (10-49), a question over 3-4 of them (2-3 operations) in its own order; every running
    total stays in 1..99. Steps: the substitution, then one 'a + b = c.' per operation."""
    n_terms = rng.choice([3, 3, 4])
    names = sorted(rng.sample(VARIABLES, n_terms + rng.choice([0, 0, 1])))
    values = {v: rng.randint(10, 49) for v in names}
    order = rng.sample(names, n_terms)
    total, signs, steps = values[order[0]], [], []
    for v in order[1:]:
        n = values[v]
        can_lose, can_gain = total - n >= 1, total + n <= REASON_MAX_TOTAL
        sign = "-" if can_lose and (not can_gain or rng.random() < 0.5) else "+"
        if sign == "+" and not can_gain:  # neither fits: this value takes no part
            continue
        steps.append(f"{total} {sign} {n} = {total + n if sign == '+' else total - n}.")
        total = total + n if sign == "+" else total - n
        signs.append((sign, v))
    if not signs:
        return make_reasoning_problem(rng)
    expr = order[0] + "".join(f" {s} {v}" for s, v in signs)
    numbers = str(values[order[0]]) + "".join(f" {s} {values[v]}" for s, v in signs)
    listing = ", ".join(f"{v} = {values[v]}" for v in names)
    return ReasoningProblem(f"{listing}. What is {expr}?", (f"{expr} = {numbers}.", *steps), total)


def reasoning_problems(n: int, seed: int) -> list[ReasoningProblem]:
    rng = random.Random(seed)
    return [make_reasoning_problem(rng) for _ in range(n)]


def reasoning_documents(n: int, seed: int, header_rate: float = 0.7, reason_rate: float = 0.85) -> list[str]:
    """Pretraining documents for the reasoning task. A ``header_rate`` share have a mode header, and of those a
    ``reason_rate`` share reason step by step (the rest answer directly); documents without a header are direct."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        p = make_reasoning_problem(rng)
        header = rng.random() < header_rate
        mode = ("reason" if rng.random() < reason_rate else "direct") if header else "direct"
        docs.append(p.prompt(mode if header else None) + p.solution(mode))
    return docs


def is_reasoning(text: str) -> bool:
    """True when the first line of a completion works step by step (at least one 'a + b = c.' before the answer)."""
    line = text.strip().split("\n")[0]
    return re.search(r"\d+ [+-] \d+ = -?\d+\.", line) is not None


def score_answers(outputs: list[str], answers: list[int], fmt: str = "sentence") -> float:
    """Share of completions whose first line ends in ``fmt`` with the right number (the held-out rule)."""
    if not outputs:
        return float("nan")
    return sum(extract_answer(o, fmt) == a for o, a in zip(outputs, answers)) / len(outputs)


def generated_tokens(tokenizer, outputs: list[str]) -> int:
    """Tokens generated for completions cut at their first newline: the line's tokens plus the newline that
    stopped decoding (test-time compute, counted by re-encoding the text)."""
    return sum(len(tokenizer.encode(o.split("\n")[0])) + 1 for o in outputs)

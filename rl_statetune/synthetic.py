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

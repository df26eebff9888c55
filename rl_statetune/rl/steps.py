"""The task's step check: every equation an answer writes (``15 - 12 = 3``, ``c - a + w = 15 - 12 + 16``,
GSM8K's ``<<48/2=24>>``) is evaluated exactly, with the names the prompt binds (``a = 12, c = 15``), and judged
right or wrong.

It is the ``steps`` term of ``reward.terms``: a process reward from a rule, not a model. The tokens that write an
equation's right-hand side get ``1`` where the equation holds and ``0`` where it does not, so the policy gradient
lands on the step that went wrong (a two-digit sum, a value substituted for the wrong name) instead of being
spread over the whole answer as the outcome verifier's is. Equations with a name the prompt does not bind, or
with anything but numbers, names, ``+ - * /`` and parentheses, are not judged.

The ``corrections`` term goes one further: where an equation is wrong, the rule writes the right-hand side it
should have had (``correction_rows``), and the learner is taught it after its own tokens up to there.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from fractions import Fraction

import torch

_ATOM = r"(?:[A-Za-z_]\w*|\d+(?:\.\d+)?)"
_EXPR = rf"\(?\s*{_ATOM}(?:\s*\)?\s*[-+*/]\s*\(?\s*{_ATOM})*(?:\s*\))?"
EQUATION = re.compile(rf"(?P<lhs>{_EXPR})\s*=\s*(?P<rhs>{_EXPR})")
BINDING = re.compile(r"\b([A-Za-z_]\w*)\s*=\s*(-?\d+(?:\.\d+)?)\b")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def bindings(prompt: str) -> dict[str, Fraction]:
    """The ``name = number`` assignments a prompt states."""
    return {name: Fraction(value) for name, value in BINDING.findall(prompt)}


def evaluate(expr: str, names: dict[str, Fraction]) -> Fraction | None:
    """The exact value of an arithmetic expression over numbers and bound names; None where it is not one (an
    unbound name, another operator, a division by zero, unbalanced parentheses)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                      bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = value(node.operand)
            return None if v is None else -v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = value(node.left), value(node.right)
            if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
                return None
            return _OPS[type(node.op)](a, b)
        return None

    return value(tree)


def _equations(text: str, names: dict[str, Fraction]):
    """The judged equations of ``text``: (match, value of the left side, value of the right side)."""
    for m in EQUATION.finditer(text):
        lhs, rhs = evaluate(m["lhs"], names), evaluate(m["rhs"], names)
        if lhs is not None and rhs is not None:
            yield m, lhs, rhs


def judge_steps(text: str, prompt: str = "") -> list[tuple[int, int, bool]]:
    """``(start, end, right)`` for each judged equation of ``text``: the character span of its right-hand side
    and whether both sides have the same value (names bound by ``prompt``)."""
    return [(m.start("rhs"), m.end("rhs"), lhs == rhs) for m, lhs, rhs in _equations(text, bindings(prompt))]


def _number(value: Fraction) -> str | None:
    return str(value.numerator) if value.denominator == 1 else None


def corrections(text: str, prompt: str = "") -> list[tuple[int, str]]:
    """``(start, right)`` for each wrong equation of ``text`` whose right-hand side the rule can write: ``start``
    is where its right-hand side begins, ``right`` what it should have been. A number is corrected to the left
    side's value (``14 - 13 = 2`` -> ``1``); a substitution, numbers for the left side's names, to the bound
    values (``a - u = 39 - 31`` -> ``39 - 13``), the learner's own operators and spacing kept. Other wrong
    equations (a right side with names, a value that is not a whole number) get none."""
    names = bindings(prompt)
    values = {k: _number(v) for k, v in names.items()}
    out = []
    for m, lhs, rhs in _equations(text, names):
        if lhs == rhs:
            continue
        lhs_text, rhs_text = m["lhs"], m["rhs"].strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", rhs_text):
            right = _number(lhs)
        elif re.search(r"[A-Za-z_]", lhs_text) and not re.search(r"[A-Za-z_]", rhs_text):
            right = re.sub(r"[A-Za-z_]\w*", lambda n: values[n[0]] or n[0], lhs_text.strip())
            right = right if re.fullmatch(r"[\d\s+\-*/().]*", right) else None
        else:
            right = None
        if right is not None:
            out.append((m.start("rhs"), right))
    return out


def step_token_rewards(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]],
                       prompts: Sequence[str], K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, K] per-token step reward (1 on a right equation's right-hand side, 0 on a wrong one's) and [rows, K]
    bool: the token writes part of a judged right-hand side. ``spans``: each answer token's character span
    (``align.decode_with_spans``); ``prompts``: each answer's prompt, for its bindings."""
    reward = torch.zeros(len(texts), K)
    judged = torch.zeros(len(texts), K, dtype=torch.bool)
    for r, (text, sp, prompt) in enumerate(zip(texts, spans, prompts)):
        for start, end, right in judge_steps(text, prompt):
            for t, (s, e) in enumerate(sp[:K]):
                if s < end and e > start:    # a token in two right-hand sides keeps the worse verdict
                    reward[r, t] = min(float(right), reward[r, t]) if judged[r, t] else float(right)
                    judged[r, t] = True
    return reward, judged


def step_advantages(reward: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
    """``r_t - b`` on the judged tokens (``b``: their mean reward over the batch), 0 elsewhere: a wrong step is
    pushed down, a right one pulled up, and a batch whose steps are all right carries no signal."""
    n = judged.sum()
    if n == 0:
        return torch.zeros_like(reward)
    b = reward[judged].mean()
    return (reward - b) * judged


def correction_rows(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], ids: Sequence[Sequence[int]],
                    prompts: Sequence[str], tokenizer) -> list[tuple[int, list[int], list[int]]]:
    """``(row, head, fix)`` for each correction (``corrections``) of each answer: ``head`` the answer's tokens
    before the token where the wrong right-hand side begins, ``fix`` the tokens of what should follow them (that
    token's text up to the right-hand side, then the right value). The learner's own prefix is kept as it wrote
    it, so the right value is taught in the contexts its own sampling reaches (as DAgger's expert labels)."""
    out = []
    for r, (text, sp, row, prompt) in enumerate(zip(texts, spans, ids, prompts)):
        for start, right in corrections(text, prompt):
            t0 = next(t for t, (s, e) in enumerate(sp) if e > start and e > s)
            out.append((r, list(row[:t0]), tokenizer.encode(text[sp[t0][0]:start] + right)))
    return out

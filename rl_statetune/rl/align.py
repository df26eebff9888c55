"""Aligning a guide's tokens with the RWKV tokens of the same text, by character offsets only.

The guide and the learner tokenise text differently. Both sides are mapped to character spans of one string:

* an RWKV token's span is the characters its bytes complete (a token holding only part of a multi-byte
  character has an empty span; the token that completes the character owns it);
* a guide token (:class:`ScoredText`) has its own span, and is **attributed to the RWKV token in which it
  ends**, i.e. RWKV token ``i`` with ``start_i < end_j <= end_i``.

Summed over RWKV tokens the attributed log-probabilities telescope to the guide's log-probability of the
whole text, and where both tokenisers cut at the same character they are exactly the guide's log-probability
of that RWKV token's characters. An RWKV token inside a longer guide token receives nothing ("unscored").
"""

from __future__ import annotations

import bisect
import codecs
from collections.abc import Sequence
from dataclasses import dataclass

from rl_statetune_guides import Guide, ScoredText


def decode_with_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of RWKV token ids and each token's character span in it: a token holding only part of a multi-byte
    character has an empty span (the token that completes the character owns it), invalid bytes decode to U+FFFD,
    an id with no bytes (the head's padding rows) to nothing."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts, spans, pos = [], [], 0
    for i in ids:
        try:
            b = tokenizer.token_bytes(int(i))
        except (KeyError, IndexError):
            b = b""
        s = dec.decode(b)
        parts.append(s)
        spans.append((pos, pos + len(s)))
        pos += len(s)
    return "".join(parts), spans


def char_spans(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each RWKV token of a text that was encoded from a ``str`` (valid UTF-8)."""
    return decode_with_spans(tokenizer, ids)[1]


def attribute(scored: ScoredText, spans: Sequence[tuple[int, int]], shift: int = 0) -> tuple[list[float], list[bool]]:
    """Guide log-probabilities summed per RWKV token, and whether any guide token ended in it.

    ``shift`` is where the scored text starts inside the text the spans index (e.g. after a joining space).
    Guide tokens ending past the last span are ignored.
    """
    ends = [e for _, e in spans]
    lp, hit = [0.0] * len(spans), [False] * len(spans)
    for (_, end), value in zip(scored.offsets, scored.logprobs):
        i = bisect.bisect_left(ends, end + shift)
        if i < len(spans):
            lp[i] += value
            hit[i] = True
    return lp, hit


def _char_class(c: str) -> str:
    return "space" if c.isspace() else "letter" if c.isalpha() else "digit" if c.isdigit() else "symbol"


def top_k_logprob(scored: ScoredText, char_pos: int, text: str) -> float | None:
    """The guide's log-probability of the one-token continuation ``text`` at character ``char_pos`` of
    ``scored.text``, read from its top-k: only where a guide token starts exactly at ``char_pos`` and ``text`` is
    one of that token's alternatives, character for character. ``None`` otherwise (ask the guide instead).

    Also ``None`` where the character before ``char_pos`` and the first of ``text`` would fall in one pre-token
    (both letters, digits or symbols, or after whitespace): the exact query re-tokenises prefix + text, and there
    the guide may merge them into one token ("average" + "speed", "\n" + "\n"), a value the top-k cannot give.
    """
    if scored.top_k is None or not text or "\ufffd" in text or not 0 <= char_pos < len(scored.text):
        return None
    if char_pos > 0:
        prev = scored.text[char_pos - 1]
        if prev.isspace() or _char_class(prev) == _char_class(text[0]):
            return None
    i = scored.token_index_at(char_pos)          # the non-empty token holding char_pos
    if scored.offsets[i][0] != char_pos:
        return None
    return next((lp for piece, lp in scored.top_k[i] if piece == text), None)


@dataclass(frozen=True)
class TextQuery:
    """The guide's log-probability of ``text`` written right after ``prefix`` (a prefix of the CoT).

    ``join`` is the learner-side text that precedes the guide's own output (e.g. a space after "A:"); it is
    removed before the guide sees the continuation, so the guide is scored on text in its own framing.
    """

    prompt: str
    prefix: str
    text: str
    join: str = ""

    def continuation(self) -> tuple[str, int, int]:
        """(text the guide scores, window start, window end): guide tokens ending in (start, end] count."""
        full = self.prefix + self.text
        cut = len(self.join) if full.startswith(self.join) else len(full) - len(full.lstrip())
        return full[cut:], len(self.prefix) - cut, len(full) - cut


def score_texts(guide: Guide, queries: Sequence[TextQuery], floor: float) -> list[float]:
    """Guide log-probability of each query's ``text`` given prompt and prefix, in one batched ``score`` call.

    Queries whose text is empty, holds an incomplete character, or lies entirely inside the removed ``join``
    get ``floor``. Identical continuations are scored once.
    """
    plans, unique = [], {}
    for q in queries:
        cont, lo, hi = q.continuation()
        if not q.text or "\ufffd" in q.text or hi <= max(lo, 0):
            plans.append(None)
            continue
        key = (q.prompt, cont)
        unique.setdefault(key, len(unique))
        plans.append((unique[key], lo, hi))
    scored = guide.score([p for p, _ in unique], [c for _, c in unique]) if unique else []
    out = []
    for plan in plans:
        if plan is None:
            out.append(floor)
            continue
        k, lo, hi = plan
        s = scored[k]
        out.append(float(sum(v for (_, e), v in zip(s.offsets, s.logprobs) if lo < e <= hi)))
    return out

"""Character-offset alignment of guide tokens to RWKV tokens."""

from __future__ import annotations

import pytest
from rl_statetune_guides import ScoredText

from rl_statetune.rl.align import TextQuery, attribute, char_spans, score_texts
from char_guide import CharGuide, char_logprob, text_logprob
from rl_statetune.tokenizer import WorldTokenizer


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


def scored(text, cuts, lps):
    spans = list(zip([0] + cuts, cuts + [len(text)]))
    return ScoredText(text, tuple(text[a:b] for a, b in spans), tuple(spans), tuple(lps))


def test_char_spans_partition_text_with_multibyte_characters(tok):
    text = " Tom has 7 日本 coins 𓀀."
    ids = tok.encode(text)
    spans = char_spans(tok, ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # the first i+1 tokens complete exactly the characters up to the end of span i
    for i, (_, e) in enumerate(spans):
        assert tok.decode_bytes(ids[: i + 1]).decode("utf-8", errors="ignore") == text[:e]
    assert any(s == e for s, e in spans)  # a byte token holding part of a character has an empty span


def test_attribute_sums_guide_tokens_by_end_offset():
    s = scored("hello world", [3, 5, 9], [-1.0, -2.0, -3.0, -4.0])   # hel|lo| wor|ld
    assert attribute(s, [(0, 5), (5, 11)]) == ([-3.0, -7.0], [True, True])
    # an RWKV token strictly inside a guide token gets nothing (unscored)
    assert attribute(s, [(0, 2), (2, 5), (5, 7), (7, 11)]) == ([0.0, -3.0, 0.0, -7.0], [False, True, False, True])
    # shifted: the scored text starts after a 1-character join in the learner's text
    assert attribute(s, [(0, 6), (6, 12)], shift=1) == ([-3.0, -7.0], [True, True])
    # the attributed values always telescope to the total
    lp, _ = attribute(s, [(0, 1), (1, 4), (4, 4), (4, 11)])
    assert sum(lp) == s.total_logprob == -10.0


def test_score_texts_windows_joins_floors_and_dedupes():
    g = CharGuide()
    qs = [TextQuery("p", "ab", "cd"),                 # guide scores "abcd", window (2, 4]
          TextQuery("p", " ab", "cd", join=" "),      # join removed: the same continuation "abcd"
          TextQuery("p", "", " x", join=" "),         # " x" -> guide sees "x"
          TextQuery("p", "", " ", join=" "),          # lies entirely in the join -> floor
          TextQuery("p", "ab", ""),                   # end of text -> floor
          TextQuery("p", "ab", "\ufffd")]             # an incomplete character -> floor
    got = score_texts(g, qs, floor=-99.0)
    want_cd = char_logprob("c") + char_logprob("d")
    assert got == [want_cd, want_cd, char_logprob("x"), -99.0, -99.0, -99.0]
    (_, conts), = g.score_calls
    assert sorted(conts) == ["abcd", "x"]            # one batched call, identical continuations once
    assert text_logprob("abcd") == sum(char_logprob(c) for c in "abcd")

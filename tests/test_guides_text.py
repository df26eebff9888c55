"""ScoredText invariants and the offset helpers every backend relies on."""

from __future__ import annotations

import pickle

import pytest

from rl_statetune_guides import GuideOutputError, ScoredText
from rl_statetune_guides.text import align_pieces, partition_offsets, scored_text


def test_scored_text_partition_and_helpers() -> None:
    s = ScoredText("ab cd", ("ab", " cd"), ((0, 2), (2, 5)), (-0.5, -1.25))
    assert len(s) == 2 and s.total_logprob == -1.75
    assert [s.token_index_at(i) for i in range(5)] == [0, 0, 1, 1, 1]
    with pytest.raises(IndexError):
        s.token_index_at(5)
    assert pickle.loads(pickle.dumps(s)) == s  # crosses Ray actor boundaries


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "ab", "pieces": ("a",), "offsets": ((0, 1),), "logprobs": (-1.0,)}, "offsets end at 1"),
        ({"text": "ab", "pieces": ("a", "b"), "offsets": ((0, 1), (0, 2)), "logprobs": (-1.0, -1.0)}, "contiguous"),
        ({"text": "ab", "pieces": ("a", "x"), "offsets": ((0, 1), (1, 2)), "logprobs": (-1.0, -1.0)}, "piece 1"),
        ({"text": "ab", "pieces": ("ab",), "offsets": ((0, 2),), "logprobs": (0.5,)}, "<= 0"),
        ({"text": "ab", "pieces": ("ab",), "offsets": ((0, 2),), "logprobs": ()}, "same length"),
        ({"text": "ab", "pieces": (), "offsets": (), "logprobs": ()}, "no tokens"),
    ],
)
def test_scored_text_rejects_broken_data(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoredText(**kwargs)


def test_partition_offsets_repairs_tokenizer_conventions() -> None:
    # trimmed leading space (gap), three byte tokens of one character (overlap), trailing space uncovered
    raw = [(0, 2), (3, 5), (5, 6), (5, 6), (5, 6), (6, 7)]
    assert partition_offsets(raw, 8) == [(0, 2), (2, 5), (5, 6), (6, 6), (6, 6), (6, 8)]
    assert partition_offsets([], 0) == []
    with pytest.raises(ValueError, match="no token offsets"):
        partition_offsets([], 3)
    with pytest.raises(ValueError, match="invalid token offset"):
        partition_offsets([(2, 1)], 3)


def test_align_pieces_exact_bos_and_undecodable_bytes() -> None:
    assert align_pieces("Hi there", ["Hi", " there"]) == [(0, 2), (2, 8)]
    # An echoed BOS that is not part of the text gets an empty span at 0.
    assert align_pieces("Hi", ["<s>", "Hi"]) == [(0, 0), (0, 2)]
    # Byte tokens decoded to replacement characters: the run's first token takes the character.
    assert align_pieces("a 日b", ["a", " ", "\ufffd", "\ufffd", "\ufffd", "b"]) == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 3),
        (3, 3),
        (3, 4),
    ]
    # An unmatched run at the very end takes the rest of the text.
    assert align_pieces("ok é", ["ok", " ", "bytes:\\xc3", "bytes:\\xa9"]) == [(0, 2), (2, 3), (3, 4), (4, 4)]
    with pytest.raises(GuideOutputError, match="cannot align"):
        align_pieces("abc", ["ab"])


def test_align_pieces_gives_a_character_vllm_puts_on_its_last_byte_token_to_the_first() -> None:
    # vLLM reports a character's byte tokens as "" and the character on the token that completes it (here " 日"
    # over three tokens, then 本 whole, then 語 over three): the ScoredText convention puts it on the first.
    pieces = [" then", "", "", " 日", "本", "", "", "語", " ok"]
    assert align_pieces(" then 日本語 ok", pieces) == [
        (0, 5), (5, 7), (7, 7), (7, 7), (7, 8), (8, 9), (9, 9), (9, 9), (9, 12)]
    # at the start of the text too; a BOS-like unmatched piece keeps the old rule (it takes no characters)
    assert align_pieces("日b", ["", "", "日", "b"]) == [(0, 1), (1, 1), (1, 1), (1, 2)]
    assert align_pieces("Hi", ["<s>", "Hi"]) == [(0, 0), (0, 2)]


def test_scored_text_builder() -> None:
    s = scored_text("x y", [(0, 1), (1, 3)], [-1, -2])
    assert s.pieces == ("x", " y") and s.logprobs == (-1.0, -2.0)


def test_one_templating_rule_only_prompt_is_substituted():
    from rl_statetune_guides.prompting import fill_template

    assert fill_template("{{x}} {0} Q: {prompt}\nA: {prompt}", "2+2?") == "{{x}} {0} Q: 2+2?\nA: 2+2?"
    with pytest.raises(ValueError, match=r"must contain \{prompt\}"):
        fill_template("{question}", "x")

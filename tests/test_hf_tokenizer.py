"""RWKVWorldTokenizer (a transformers PreTrainedTokenizer) must give our WorldTokenizer's ids for every text and
decode them back to the text."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerBase  # noqa: E402

from rl_statetune.hf import RWKVWorldTokenizer, world_tokenizer  # noqa: E402
from rl_statetune.tokenizer import WorldTokenizer  # noqa: E402

TEXTS = [
    "Q: Tom has 3 apples and finds 2 more. How many apples does Tom have?\nA: 3 + 2 = 5. The answer is 5.\n",
    "Grüße aus Köln – ça va? Ñandú, ğüşıöç, Ελληνικά, русский текст, עברית, العربية",
    "中文分词测试：我们今天去公园。日本語のテキスト、カタカナ。한국어 문장입니다.",
    "emoji 😀👍🏽👩‍👩‍👧‍👦🇩🇪 and symbols ∑∫√≠ ≤ ≥ ∞ €£¥",
    "special <s></s> [CLS] <pad> <|reserved_65530|> \x00\x01\x7f\t\r\n   trailing spaces   ",
    "  leading spaces, tabs\t\tand\n\n\nnewlines",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return world_tokenizer()


@pytest.fixture(scope="module")
def ours():
    return WorldTokenizer()


def test_is_a_transformers_tokenizer(tok):
    assert isinstance(tok, PreTrainedTokenizerBase)
    assert tok.eos_token_id == 0 and tok.pad_token_id == 0 and tok.bos_token_id is None
    assert tok.vocab_size == len(tok) == 65536 > WorldTokenizer().vocab_size  # = the embedding rows


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_ours_and_round_trip(tok, ours, text):
    ids = tok(text)["input_ids"]
    assert ids == ours.encode(text)
    assert tok.encode(text) == ours.encode(text)  # no BOS / EOS added
    assert tok.decode(ids) == text == ours.decode(ids)
    assert tok.convert_tokens_to_string(tok.tokenize(text)) == text


def test_eos_text_is_id_0_as_transformers_tokenizers_do(ours):
    # TRL appends tokenizer.eos_token as text: it must become id 0, not the 7 byte tokens of "<|endoftext|>"
    tok = world_tokenizer()
    assert tok("a" + tok.eos_token)["input_ids"] == ours.encode("a") + [0]
    assert tok("a<|endoftext|>b")["input_ids"] == ours.encode("a") + [0] + ours.encode("b")
    # the RWKV runtimes' reading (typed text stays text) on request
    raw = world_tokenizer(split_special_tokens=True)
    assert raw("a<|endoftext|>b")["input_ids"] == ours.encode("a<|endoftext|>b")


def test_end_of_text_id_decodes(tok, ours):
    ids = ours.encode("hello") + [0] + ours.encode("world")
    assert tok.decode(ids, skip_special_tokens=True) == "helloworld" == ours.decode(ids)
    assert tok.decode(ids) == "hello<|endoftext|>world"


def test_invalid_utf8_is_replaced_like_ours(tok, ours):
    ids = ours.encode("😀")
    assert len(ids) > 0
    # a lone continuation byte token: find one in the vocabulary
    lone = next(i for i in range(1, 300) if ours.token_bytes(i) == b"\x80")
    assert tok.decode([lone]) == ours.decode([lone]) == "\ufffd"


def test_batch_padding_left_and_right(tok, ours):
    batch = tok(["a b c d", "xyz"], padding=True, padding_side="left")
    a, b = ours.encode("a b c d"), ours.encode("xyz")
    assert batch["input_ids"][1] == [0] * (len(a) - len(b)) + b
    assert batch["attention_mask"][1] == [0] * (len(a) - len(b)) + [1] * len(b)
    right = tok(["a b c d", "xyz"], padding=True)
    assert right["input_ids"][1] == b + [0] * (len(a) - len(b))


def test_save_and_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = RWKVWorldTokenizer.from_pretrained(tmp_path)
    for t in TEXTS:
        assert again(t)["input_ids"] == tok(t)["input_ids"]
    from rl_statetune.hf import register_auto_classes
    from rl_statetune.hf.configuration import RWKV7HFConfig

    register_auto_classes()
    RWKV7HFConfig().save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(auto, RWKVWorldTokenizer) and auto(TEXTS[2])["input_ids"] == tok(TEXTS[2])["input_ids"]

"""Greedy decoding: stop strings, end of text, max_new_tokens, batching/padding, dropping finished rows."""

import pytest

from rl_statetune.eval.fakes import ByteTokenizer, ScriptedLM
from rl_statetune.eval.generate import greedy_generate, truncate_at_stop

TOK = ByteTokenizer()
SCRIPTS = {"@": " 3*4=12.\n#### 12\n\nQuestion: and more", "%": " It is 7.\nQuestion: x", "&": " no stop here"}
PROMPTS = ["short @", "a much longer prompt, so rows are padded %", "no trigger", "&", "x @"]
EXPECTED = [" 3*4=12.\n#### 12\n\n", " It is 7.\n", "", " no stop here", " 3*4=12.\n#### 12\n\n"]


def test_truncate_at_stop_uses_earliest_stop():
    assert truncate_at_stop("abc Question: d</s>", ["</s>", "Question:"]) == "abc "
    assert truncate_at_stop("abc", ["Question:"]) == "abc"
    assert truncate_at_stop("abc", []) == "abc"


@pytest.mark.parametrize("selectable", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_greedy_generate_stops_and_ignores_padding(selectable, batch_size):
    model = ScriptedLM(SCRIPTS, selectable=selectable)
    out = greedy_generate(model, TOK, PROMPTS, stop=["Question:"], max_new_tokens=64, batch_size=batch_size,
                          progress=False)
    assert out == EXPECTED


def test_decoder_stops_as_soon_as_every_row_is_done():
    model = ScriptedLM(SCRIPTS)
    greedy_generate(model, TOK, ["@", "%"], stop=["Question:"], max_new_tokens=500, progress=False)
    longest = len(TOK.encode(" 3*4=12.\n#### 12\n\nQuestion:"))  # tokens until the stop string is complete
    assert model.steps == 1 + (longest - 1)  # one prefill, then one forward per further token


def test_max_new_tokens_and_end_of_text():
    model = ScriptedLM(SCRIPTS)
    assert greedy_generate(model, TOK, ["@"], max_new_tokens=5, progress=False) == [" 3*4="]
    assert greedy_generate(model, TOK, ["&"], max_new_tokens=100, progress=False) == [" no stop here"]
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, TOK, ["@"], max_new_tokens=0, progress=False)


def test_init_state_fn_reaches_the_prefill():
    import torch

    from rl_statetune.eval.fakes import FakeState

    model = ScriptedLM(SCRIPTS)
    # start every row as if "%" had just been read: the untriggered prompt "plain" now runs the "%" script,
    # its 5 tokens moving the script to position 4 (" It is 7.\n"[4:])
    started = lambda b: FakeState(torch.tensor([[1, -1]] * b))
    out = greedy_generate(model, TOK, ["plain"], stop=["Question:"], init_state_fn=started, progress=False)
    assert out == ["is 7.\n"]
    assert greedy_generate(model, TOK, ["plain"], progress=False) == [""]

"""The held-out record: accuracy by the task's rule, and the test-time compute (generated tokens per answer)
counted against a hand-written greedy decode of the embedded model."""

from __future__ import annotations

import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.config import parse_config
from rl_statetune.data import load_examples
from rl_statetune.run.heldout import held_out, held_out_accuracy
from rl_statetune.synthetic import extract_answer
from rl_statetune.tokenizer import WorldTokenizer


def greedy_steps(model, tok, prompt: str, limit: int) -> tuple[str, int]:
    """One token at a time from the zero state until the text holds a newline: (line, tokens decoded)."""
    logits, state = model(torch.tensor([tok.encode(prompt)]))
    ids: list[int] = []
    while len(ids) < limit:
        ids.append(int(logits[0, -1].argmax()))
        if "\n" in tok.decode(ids):
            break
        logits, state = model(torch.tensor([[ids[-1]]]), state)
    return tok.decode(ids).split("\n")[0], len(ids)


def test_held_out_counts_the_tokens_greedy_decoding_takes():
    torch.set_num_threads(1)
    model, tok = load_model("embedded", "float32"), WorldTokenizer()
    _, held = load_examples(parse_config({"data": {"train_size": 8, "eval_size": 6}}).data)
    res = held_out(model, tok, held, None, "hash", max_new_tokens=40)
    lines, steps = zip(*(greedy_steps(model, tok, e.prompt, 40) for e in held))
    assert res.mean_tokens == sum(steps) / len(held) and res.mean_tokens > 5
    assert [o.split("\n")[0] for o in res.outputs] == list(lines)
    acc = sum(extract_answer(line, "hash") == int(e.answer) for line, e in zip(lines, held)) / len(held)
    assert res.accuracy == acc == held_out_accuracy(model, tok, held, None, "hash", 40) and acc > 0.5
    assert res.seconds > 0

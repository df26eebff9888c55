"""The self-guide: the learner's frozen model with a header, behind the guide interface, no second model.

* ``score`` returns, per RWKV token of the continuation, the frozen model's log-probability after
  header + prompt + the tokens before it, with character spans that partition the text: checked against the model
  run on each text alone (no batching, no padding). Shifting the scored positions by one fails it.
* ``generate`` is the frozen model's greedy completion of header + prompt.
* Self-guided RL (``guide.self_guide``, the match reward) on the embedded model: the header "Format: sentence"
  makes the frozen model answer "The answer is N."; the tuned state learns to do it with no header (held-out
  0 -> >= 0.9).
"""

from __future__ import annotations

import math

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.generation import generate
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.self_guide import SelfGuide
from rl_statetune.tokenizer import WorldTokenizer

HEADER = "Format: sentence\n"


@pytest.fixture(scope="module")
def model_tok():
    return load_model("embedded"), WorldTokenizer()


def reference_logprob(model, tok, context: str, text: str) -> list[float]:
    ctx, ids = tok.encode(context), tok.encode(text)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ctx + ids]))
    logp = torch.log_softmax(logits[0].float(), -1)
    return [float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(ids)]


def test_score_is_the_frozen_models_logprob_of_each_token(model_tok):
    model, tok = model_tok
    guide = SelfGuide(model, tok, HEADER, batch_size=2)      # 3 rows: two batches, padding in the first
    prompts = ["Q: Tom has 3 pens. How many pens does Tom have?\nA:", "Q: Mia has 5 cards and gets 2 more. How "
               "many cards does Mia have?\nA:", "Q: x?\nA:"]
    conts = [" Tom has 3. The answer is 3.", " 5 + 2 = 7. The answer is 7.\n", " é ü 9"]
    scored = guide.score(prompts, conts)
    for p, c, s in zip(prompts, conts, scored):
        ref = reference_logprob(model, tok, HEADER + p, c)
        assert s.text == c and "".join(s.pieces) == c
        assert len(s.logprobs) == len(ref)
        assert s.logprobs == pytest.approx(ref, abs=1e-4)
        assert s.total_logprob == pytest.approx(math.fsum(ref), abs=1e-3)
    assert guide.score(["Q: x?\nA:"], [""])[0].text == ""


def test_generate_is_the_frozen_models_completion_after_the_header(model_tok):
    model, tok = model_tok
    guide = SelfGuide(model, tok, HEADER)
    prompts = ["Q: Tom has 3 pens and buys 4 more. How many pens does Tom have?\nA:"]
    out = guide.generate(prompts, 40)
    assert out == generate(model, tok, [HEADER + prompts[0]], 40)
    assert out[0].strip().endswith("The answer is 7.")


def test_self_guided_rl_raises_heldout_accuracy(tmp_path):
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"},
        "data": {"target_format": "sentence", "train_size": 16, "eval_size": 12},
        "guide": {"self_guide": {"header": HEADER}, "cot": {"max_tokens": 40, "stop": ["\n"]}},
        "reward": {"kind": "match", "samples": 8},
        "pg": {"advantage": "batch"},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": 6, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path), "eval_max_new_tokens": 40},
    })
    res = run_rl(cfg, progress=False)
    assert res.acc_before <= 0.1, res.acc_before
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)

"""On-policy guidance: the learner writes its own answers, the guide scores the learner's text.

* ``outcome.guide_token_logprobs``: ONE ``guide.score`` call for all N x G answers, each answer scored after its
  own prompt, the join the guide never sees left unjudged, and the attributed log-probabilities summing to the
  guide's log-probability of the text (a character-level guide with a closed form).
* Direction: on the embedded model, the self-guide with the header "Format: sentence" scores the learner's
  sampled answers; per-token reward log p_guide - log p_learner (reverse KL) switches the tuned state to the
  guide's format with no header: held-out accuracy 0 -> >= 0.9. Pairing the guide's scores with the wrong
  rollouts (rolling the answers' index by one) makes it fail.
"""

from __future__ import annotations

import pytest
import torch
from char_guide import CharGuide, text_logprob

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.align import decode_with_spans
from rl_statetune.rl.outcome import guide_token_logprobs
from rl_statetune.tokenizer import WorldTokenizer


def test_one_score_call_each_answer_after_its_own_prompt():
    tok = WorldTokenizer()
    items = [CotItem(f"Q{n}\nA:", f"ask {n}", "", join=" ") for n in range(2)]
    texts = [" 1 + 2 = 3. The answer is 3.\n", " The answer is 12.", " no", "\n"]       # N = 2, G = 2
    decoded = [decode_with_spans(tok, tok.encode(t)) for t in texts]
    assert [t for t, _ in decoded] == texts
    guide = CharGuide()
    K = max(len(s) for _, s in decoded)
    lp, judged = guide_token_logprobs(guide, items, texts, [s for _, s in decoded], 2, K, floor=-20.0)
    assert len(guide.score_calls) == 1
    prompts, conts = guide.score_calls[0]
    assert prompts == ["ask 0", "ask 0", "ask 1"]                 # answer r after items[r // G]; "\n" not scored
    assert conts == [t[1:] for t in texts[:3]]                    # the join " " removed, as the guide wrote its CoT
    for r, t in enumerate(texts[:3]):
        n = len(decoded[r][1])
        assert float(lp[r, :n].sum()) == pytest.approx(text_logprob(t[1:]), abs=1e-4)
        assert bool(judged[r, :n].all()) and not bool(judged[r, n:].any())   # first token " 1" ends past the join
    assert torch.equal(lp[3, :1], torch.tensor([-20.0])) and bool(judged[3, 0])   # empty answer: the floor


def test_on_policy_self_guidance_raises_heldout_accuracy(tmp_path):
    cfg = RLConfig.model_validate({
        "model": {"path": "embedded"},
        "data": {"target_format": "sentence", "train_size": 16, "eval_size": 12},
        "guide": {"self_guide": {"header": "Format: sentence\n"}},
        "reward": {"terms": {"on_policy": 1.0}, "samples": 4, "max_new_tokens": 32},
        "optim": {"lr": 1.0, "lr_final": 0.05},
        "train": {"steps": 5, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path), "eval_max_new_tokens": 40},
    })
    res = run_rl(cfg, progress=False)
    assert res.acc_before <= 0.1, res.acc_before
    assert res.acc_after >= 0.9, (res.acc_after, res.rewards)
    assert res.rewards[-1] > res.rewards[0]             # reverse KL to the guide fell

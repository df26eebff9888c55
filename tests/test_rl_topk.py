"""Actions read from the guide's top-k: the mapping on a hand-made ScoredText, and on a real SmolLM2 CoT batch the
same values as the exact text queries, with fewer queries."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch
from rl_statetune_guides import ScoredText, build_guide

from rl_statetune.data import Example
from rl_statetune.rl.align import top_k_logprob
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import collate_cots, guide_prompt, make_items
from rl_statetune.rl.rewards import guide_logprobs_of_actions
from rl_statetune.rl.source import CountingGuide
from rl_statetune.tokenizer import WorldTokenizer

TEXT = "Tom has 7."
SCORED = ScoredText(TEXT, ("Tom", " has", " 7", "."), ((0, 3), (3, 7), (7, 9), (9, 10)), (-1.0, -0.5, -0.2, -0.1),
                    ((("Tom", -1.0),), ((" has", -0.5), (" had", -1.5)), ((" 7", -0.2), (" 8", -2.5)),
                     ((".", -0.1), ("!", -3.0))))


def test_scored_text_checks_its_top_k():
    with pytest.raises(ValueError, match="top_k has 1 entries for 4 pieces"):
        replace(SCORED, top_k=((("Tom", -1.0),),))
    with pytest.raises(ValueError, match="finite logprob <= 0"):
        replace(SCORED, top_k=SCORED.top_k[:3] + (((".", 0.5),),))
    with pytest.raises(ValueError, match="finite logprob <= 0"):
        replace(SCORED, top_k=SCORED.top_k[:3] + (((".", float("-inf")),),))


def test_top_k_mapping_hand_made():
    assert top_k_logprob(SCORED, 3, " had") == -1.5                 # a guide token starts at 3, " had" is in its top-k
    assert top_k_logprob(SCORED, 9, "!") == -3.0
    assert top_k_logprob(SCORED, 3, " hat") is None                # not among the alternatives
    assert top_k_logprob(SCORED, 3, " ha") is None                 # a prefix of an alternative is not one
    assert top_k_logprob(SCORED, 4, "had") is None                 # no guide token starts at 4 (inside " has")
    assert top_k_logprob(SCORED, 5, " had") is None                # nor at 5, whatever the action
    assert top_k_logprob(SCORED, 8, "8") is None                   # inside " 7"
    assert top_k_logprob(SCORED, 10, "!") is None                  # past the text
    assert top_k_logprob(replace(SCORED, top_k=None), 3, " had") is None
    assert top_k_logprob(replace(SCORED, top_k=((("Tom", -1.0),), (("has", -0.5),), (), ())), 3, "has") is None  # "Tom"+"has" may merge


PROMPTS = ["Tom has 3 apples and buys 4 more. How many apples does Tom have?", "What is 12 times 7?"]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    torch.set_num_threads(1)
    g = build_guide({"backend": "transformers", "options": {"model": str(smollm2_dir), "dtype": "float32"}})
    yield g
    g.close()


def test_top_k_equals_the_exact_query_on_a_real_cot_batch(smollm2):
    tok, cfg = WorldTokenizer(), RLConfig.model_validate({"guide": {"task_rationales": True}}).guide.cot
    gp = [guide_prompt(p, cfg) for p in PROMPTS]
    texts = [t.strip() for t in smollm2.generate(gp, max_tokens=20)]
    scored = smollm2.score(gp, texts, top_k=20)
    assert all(s.top_k is not None and len(s.top_k) == len(s) for s in scored)
    for s in scored:   # the guide's own token, where it is in its top-k, reads as its piece with its log-prob
        own = [(lp, dict(alts).get(piece)) for piece, lp, alts in zip(s.pieces, s.logprobs, s.top_k) if piece in dict(alts)]
        assert len(own) > len(s) // 2
        torch.testing.assert_close(torch.tensor([a for a, _ in own]), torch.tensor([b for _, b in own]), atol=1e-5, rtol=0)
    exs = [Example(p, "") for p in PROMPTS]
    with_k = collate_cots(make_items(exs, texts, cfg, scored), tok, 256)
    without = collate_cots(make_items(exs, texts, cfg, [replace(s, top_k=None) for s in scored]), tok, 256)
    rng = random.Random(0)
    rows, actions = [], []      # a guide-like learner: first RWKV tokens of the guide's alternatives, or a CoT token
    pool = sorted({i for t in texts for i in tok.encode(" " + t)})
    for p, (b, j) in enumerate(with_k.positions()):
        it, start = with_k.items[b], with_k.spans[b][j][0] - len(with_k.items[b].join)
        if not 0 <= start < len(it.guide_text) or p % 2:
            continue
        alts = [tok.encode(t)[0] for t, _ in it.scored.top_k[it.scored.token_index_at(start)][:4] if t.strip()]
        rows.append(p)
        actions.append([rng.choice(alts) if alts and g < 3 else rng.choice(pool) for g in range(4)])
    actions = torch.tensor(actions)
    got, want = {}, {}
    for name, batch, out in (("top_k", with_k, got), ("exact", without, want)):
        guide, counts = CountingGuide(smollm2), Counter()
        out["lp"] = guide_logprobs_of_actions(guide, batch, actions, tok, -20.0, rows, counts)
        out["counts"], out["calls"] = counts, guide.take()
    torch.testing.assert_close(got["lp"], want["lp"], atol=1e-4, rtol=0)
    n = actions.numel()
    assert want["counts"]["top_k"] == 0 and want["counts"]["own"] + want["counts"]["exact"] == n
    assert got["counts"]["own"] == want["counts"]["own"]
    assert got["counts"]["top_k"] >= n // 3, got["counts"]
    assert got["counts"]["exact"] == want["counts"]["exact"] - got["counts"]["top_k"]
    assert got["calls"]["guide_queries"] < want["calls"]["guide_queries"] // 2, (got["calls"], want["calls"])
    assert got["calls"]["guide_tokens"] < want["calls"]["guide_tokens"]

"""The learner's one teacher-forced forward equals a per-position loop; rewards on hand-made distributions."""

from __future__ import annotations

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.model import RWKV7
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotItem, collate_cots, make_items
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.rewards import guide_logprobs_of_actions, match_reward, multistep_reward, reverse_kl_reward
from char_guide import CharGuide, char_logprob, text_logprob
from rl_statetune.tokenizer import WorldTokenizer

PROMPTS = ["Q: Tom has 3 apples and buys 4 more. How many apples does Tom have?\nA:", "Q: Mia has 9 pens.\nA:"]
COTS = {PROMPTS[0]: "3 + 4 = 7. Tom has 7 apples.", PROMPTS[1]: "Mia has 9 pens. #### 9"}


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


@pytest.fixture(scope="module")
def model(tiny_world_ckpt):
    return load_model(tiny_world_ckpt, dtype=torch.float64)


def items(guide: CharGuide, score: bool = True) -> list[CotItem]:
    cfg = RLConfig.model_validate({"guide": {"task_rationales": True}}).guide.cot
    from rl_statetune.data import Example

    exs = [Example(p, "") for p in PROMPTS]
    texts = guide.generate(PROMPTS)
    return make_items(exs, texts, cfg, guide.score(PROMPTS, texts) if score else None)


def cfg(kind="reverse_kl", **reward):
    return RLConfig.model_validate({"guide": {"task_rationales": True}, "reward": {"kind": kind, **reward},
                                    "optim": {"lr": 0.1}})


def test_match_reward():
    a = torch.tensor([[5, 7, 5], [1, 1, 2]])
    assert torch.equal(match_reward(a, torch.tensor([5, 2])), torch.tensor([[1.0, 0, 1], [0, 0, 1]]))


def test_guide_logprob_of_actions_hand_made(tok):
    g = CharGuide(COTS)
    batch = collate_cots(items(g), tok, 256)
    targets = batch.targets
    # column 0: the guide's own token; column 1: " apples" / "#" style alternatives; column 2: end of text
    alt = torch.tensor(tok.encode(" pens"))[0]
    actions = torch.stack([targets, torch.full_like(targets, int(alt)), torch.zeros_like(targets)], dim=1)
    g.score_calls.clear()
    lp = guide_logprobs_of_actions(g, batch, actions, tok, floor=-50.0)
    for p, (b, j) in enumerate(batch.positions()):
        s, e = batch.spans[b][j]
        piece = batch.items[b].cot[s:e]
        # the guide never sees the joining space; the suffix newline is not guide text
        own = text_logprob(piece.lstrip(" ") if s == 0 else piece)
        if piece == "\n":
            assert lp[p, 0] == own == char_logprob("\n")  # scored as a query: '\n' after the CoT
        else:
            assert lp[p, 0] == pytest.approx(own)
        assert lp[p, 1] == pytest.approx(text_logprob(" pens" if s > 0 else "pens"))
        assert lp[p, 2] == -50.0
    # the guide's own tokens came from the CoT scores: only alternatives were queried, in one call
    (prompts, conts), = g.score_calls
    assert len(conts) == len(set(zip(prompts, conts))) and all(c.endswith(("pens", "\n")) for c in conts)
    learner_lp = torch.full(actions.shape, -2.0)
    torch.testing.assert_close(reverse_kl_reward(lp, learner_lp), lp + 2.0)


def test_guide_logprobs_on_a_subset_of_positions_equal_the_full_rows(tok):
    g = CharGuide(COTS)
    batch = collate_cots(items(g), tok, 256)
    P = len(batch.positions())
    alt = int(tok.encode(" pens")[0])
    actions = torch.stack([batch.targets, torch.full_like(batch.targets, alt)], dim=1)
    full = guide_logprobs_of_actions(g, batch, actions, tok, floor=-50.0)
    rows = [1, P // 2, P - 1]
    g.score_calls.clear()
    sub = guide_logprobs_of_actions(g, batch, actions[rows], tok, floor=-50.0, rows=rows)
    torch.testing.assert_close(sub, full[rows], rtol=0, atol=0)
    (_, conts), = g.score_calls
    assert len(conts) <= len(rows) * 2
    with pytest.raises(ValueError, match="rows of actions"):
        guide_logprobs_of_actions(g, batch, actions, tok, floor=-50.0, rows=rows)


def test_scored_positions_caps_guide_queries_per_step(model, tok):
    g = CharGuide(COTS)
    learner = Learner(model, tok, cfg("guide_logprob", samples=3, scored_positions=4), guide=g, seed=0)
    its = items(g)
    g.score_calls.clear()
    m = learner.train_step(its, 0, 10)
    (_, conts), = g.score_calls
    assert 0 < len(conts) <= 4 * 3 and m["positions"] > 4
    assert m["reward_guide_calls"] == 1 and m["reward_guide_queries"] == len(conts)   # what the step logs
    assert learner.state.time_state.abs().sum() > 0


def test_multistep_reward_hand_made():
    g = CharGuide(COTS)
    its = items(g, score=False)
    seq_lp = torch.tensor([[-1.0, -2.0]])
    r = multistep_reward(g, its[:1], [4], [["abc", ""]], seq_lp, k=3, floor=-10.0)
    # prefix " 3 +" (join removed) then the rollout "abc"; an empty rollout gets floor per token
    assert r[0, 0] == pytest.approx((text_logprob("abc") + 1.0) / 3)
    assert r[0, 1] == pytest.approx((-30.0 + 2.0) / 3)


def test_one_forward_equals_per_position_loop(model, tok):
    g = CharGuide(COTS)
    learner = Learner(model, tok, cfg(temperature=0.7), guide=g, seed=1)
    with torch.no_grad():
        learner.state.time_state.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    batch = learner.collate(items(g))
    logp = learner.policy_logprobs(batch)
    rows = []
    with torch.no_grad():
        for b, t in batch.mask.nonzero().tolist():      # position t predicts token t+1: run the prefix alone
            prefix = batch.idx[b: b + 1, : t + 1]
            logits, _ = model(prefix, learner.init_state(1))
            rows.append(torch.log_softmax(logits[0, -1].float() / 0.7, dim=-1))
    loop = torch.stack(rows)
    torch.testing.assert_close(logp.detach(), loop, rtol=0, atol=1e-5)
    actions = learner.sample_actions(logp, 3)
    one = learner.single_step_rewards(batch, logp, actions)
    per_pos = learner.single_step_rewards(batch, loop, actions)
    torch.testing.assert_close(one, per_pos, rtol=0, atol=1e-5)
    assert one.shape == (int(batch.mask.sum()), 3)


@pytest.mark.parametrize("kind", ["match", "guide_logprob", "reverse_kl", "multistep"])
def test_train_step_updates_only_the_state(model, tok, kind):
    g = CharGuide(COTS)
    learner = Learner(model, tok, cfg(kind, rollout_tokens=2, rollout_positions=2, samples=2), guide=g, seed=0)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    m = learner.train_step(items(g, score=kind != "match"), 0, 10)
    assert m["loss"] == m["loss"] and m["tokens"] > 0
    if kind != "match":  # a random tiny model never matches: zero advantages, zero gradient, by design
        assert learner.state.time_state.abs().sum() > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_guide_scored_reward_needs_a_guide(model, tok):
    with pytest.raises(ValueError, match="pass a guide"):
        Learner(model, tok, cfg("guide_logprob"))

"""Log-likelihood scoring: exact numbers against an unbatched reference, both execution paths, acc vs acc_norm,
the initial state's effect, and the real RWKV-7 (tiny random weights) through the prefix-sharing path."""

import math

import pytest
import torch

from rl_statetune.eval import multiple_choice
from rl_statetune.eval.fakes import BiasBigramLM, ByteTokenizer, FakeState
from rl_statetune.eval.loglikelihood import encode_pair, loglikelihoods
from rl_statetune.eval.tasks import MultipleChoiceDoc

TOK = ByteTokenizer()


def reference_loglikelihood(model, ctx, cont, state=None):
    """One request, one unpadded forward, explicit per-token sum."""
    seq = torch.tensor([ctx + cont[:-1]])
    logits, _ = model(seq, state=state)
    logp = logits[0].float().log_softmax(-1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def mc_doc(doc_id, ctx, choices, gold):
    return MultipleChoiceDoc(doc_id, (ctx,) * len(choices), tuple(" " + c for c in choices), gold, tuple(choices))


REQUESTS = [encode_pair(TOK, c, x) for c, x in [
    ("Question: 2+2?\nAnswer:", " four"), ("Question: 2+2?\nAnswer:", " 4"), ("Question: 2+2?\nAnswer:", " five"),
    ("A longer context, so that padding matters.", " yes"), ("", "standalone text"), ("x", " y"),
    ("The cat sat on", " the mat today"), ("The cat sat on", " a"),
]]


def test_encode_pair_moves_trailing_space_and_handles_empty_context():
    assert encode_pair(TOK, "Answer: ", "B") == (TOK.encode("Answer:"), TOK.encode(" B"))
    assert encode_pair(TOK, "", "hi") == ([TOK.eos_id], TOK.encode("hi"))
    with pytest.raises(ValueError, match="empty continuation"):
        encode_pair(TOK, "ctx", "")


@pytest.mark.parametrize("selectable", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_loglikelihoods_match_unbatched_reference(selectable, batch_size):
    model = BiasBigramLM(seed=1, selectable=selectable)
    ref = [reference_loglikelihood(model, c, x) for c, x in REQUESTS]
    got = loglikelihoods(model, REQUESTS, batch_size=batch_size, progress=False)
    assert got == pytest.approx(ref, abs=1e-4)
    assert all(r < 0 for r in ref)


def test_prefix_sharing_runs_each_context_once_and_skips_single_token_continuations():
    model = BiasBigramLM(seed=2)
    reqs = [encode_pair(TOK, "Q: pick\nAnswer:", f" {c}") for c in "ABCD"]  # 2 tokens each: " " + letter
    one_token = [(ctx + cont[:1], cont[1:]) for ctx, cont in reqs]              # same context, 1 token each
    model.calls = 0
    got = loglikelihoods(model, one_token, batch_size=8, progress=False)
    assert model.calls == 1  # a single prefill, no continuation forward
    assert got == pytest.approx([reference_loglikelihood(model, c, x) for c, x in one_token], abs=1e-5)
    with pytest.raises(TypeError, match="select"):
        loglikelihoods(BiasBigramLM(selectable=False), reqs, share_prefix=True, progress=False)


def test_init_state_is_used_in_every_forward():
    model = BiasBigramLM(seed=3, decay=1.0)
    bias = torch.zeros(257)
    bias[TOK.encode("D")[0]] = 100.0
    docs = [mc_doc(i, f"Question {i}: which letter?\nAnswer:", ["A", "B", "C", "D"], 1) for i in range(3)]
    for selectable in (True, False):
        model.selectable = selectable
        fn = (lambda b: FakeState(bias.expand(b, -1).clone())) if selectable else (lambda b: bias.expand(b, -1).clone())
        out = multiple_choice.score(model, TOK, docs, fn, batch_size=2, progress=False)
        assert [s["pred"] for s in out["samples"]] == [3, 3, 3]
        ll = out["samples"][0]["loglikelihoods"]
        ctx, cont = encode_pair(TOK, docs[0].contexts[0], " B")
        assert ll[1] == pytest.approx(reference_loglikelihood(model, ctx, cont, fn(1)), abs=1e-4)
    base = multiple_choice.score(model, TOK, docs, None, progress=False)
    assert 3 not in [s["pred"] for s in base["samples"]]


def test_scorer_picks_the_most_likely_choice():
    model = BiasBigramLM(seed=4, decay=0.0)
    model.table.zero_()
    model.table[TOK.encode(" ")[0], TOK.encode("C")[0]] = 8.0  # after a space, "C" is by far the likeliest
    docs = [mc_doc(i, f"Q{i}\nAnswer:", ["A", "B", "C", "D"], gold) for i, gold in enumerate([2, 2, 0, 3])]
    out = multiple_choice.score(model, TOK, docs, batch_size=3, progress=False)
    assert [s["pred"] for s in out["samples"]] == [2, 2, 2, 2]
    assert out["metrics"]["acc"] == 0.5 and out["metrics"]["n"] == 4
    assert out["metrics"]["acc_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)


def test_acc_and_acc_norm_differ_when_choice_lengths_differ():
    model = BiasBigramLM(decay=0.0)  # logits = onehot(previous token): repeating a byte is cheaper
    model.table.zero_()
    doc = mc_doc(0, "Pick one:", ["b", "aaaaaaaa"], gold=1)
    out = multiple_choice.score(model, TOK, [doc], progress=False)
    ll = out["samples"][0]["loglikelihoods"]
    assert ll[0] > ll[1] and ll[0] / 1 < ll[1] / 8  # raw sum prefers "b", per character "aaaaaaaa"
    assert out["metrics"]["acc"] == 0.0 and out["metrics"]["acc_norm"] == 1.0
    # characters (harness acc_norm) vs UTF-8 bytes: "ééé" is 3 characters but 6 bytes
    doc = mc_doc(0, "Pick one:", ["bb", "ééé"], gold=1)
    chars = multiple_choice.score(model, TOK, [doc], progress=False)
    nbytes = multiple_choice.score(model, TOK, [doc], length_unit="bytes", progress=False)
    assert chars["samples"][0]["pred_norm"] == 0 and nbytes["samples"][0]["pred_norm"] == 1


def test_real_rwkv7_prefix_path_equals_full_path_and_reference():
    from rl_statetune.init import init_rwkv7
    from rl_statetune.model import RecurrentState, RWKV7Config

    cfg = RWKV7Config(vocab_size=257, n_embd=32, n_layer=2, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=8,
                      dim_ffn=64)
    model = init_rwkv7(cfg, seed=0, noise=0.1).eval()
    model.wkv_backend = "naive"  # fastest on CPU for short inputs
    g = torch.Generator().manual_seed(0)
    wkv0 = torch.randn(cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size, generator=g)

    def tuned(b):
        z = model.zero_state(b)
        return RecurrentState(z.att_x, wkv0.unsqueeze(1).expand_as(z.wkv).contiguous(), z.ffn_x)

    results = []
    for fn in (None, tuned):
        shared = loglikelihoods(model, REQUESTS, fn, batch_size=3, share_prefix=True, progress=False)
        full = loglikelihoods(model, REQUESTS, fn, batch_size=2, share_prefix=False, progress=False)
        ref = [reference_loglikelihood(model, c, x, fn(1) if fn else None) for c, x in REQUESTS]
        assert shared == pytest.approx(ref, abs=1e-3) and full == pytest.approx(ref, abs=1e-3)
        results.append(shared)
    assert max(abs(a - b) for a, b in zip(*results)) > 1e-2  # the tuned state reaches the scores

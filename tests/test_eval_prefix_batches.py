"""The prefix cache's batches follow the few-shot blocks: a batch never mixes two blocks (MMLU subjects), so each
block runs once, and the scores equal plain scoring."""

import pytest
import torch

pytest.importorskip("lm_eval")

from rl_statetune.checkpoint import load_model  # noqa: E402
from rl_statetune.eval.harness import ByteTokenizer, RWKVStateLM, prefix_batches  # noqa: E402


def subject_requests(n_subjects=3, per_subject=3, block=100, seed=0):
    """[(key, context, continuation)]: each subject = its own ``block``-token few-shot prefix after a short shared
    header, then a question; four one-token choices per question (as MMLU's ' A'..' D')."""
    g = torch.Generator().manual_seed(seed)
    header = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    reqs = []
    for s in range(n_subjects):
        shots = torch.randint(20, 120, (block,), generator=g).tolist()
        for q in range(per_subject):
            ctx = header + [s + 1] + shots + torch.randint(20, 120, (12,), generator=g).tolist()
            for choice in (3, 4, 5, 6):
                reqs.append((("ctx", str(choice)), ctx, [choice]))
    return reqs


def test_batches_end_where_a_block_ends():
    reqs = subject_requests()
    contexts = sorted({tuple(c) for _, c, _ in reqs})
    batches = prefix_batches(contexts, 4)
    assert [len(b) for b in batches] == [3, 3, 3]  # one batch per subject, not [4, 4, 1]
    assert [c for b in batches for c in b] == contexts
    # no blocks (short shared prefixes only): cut every batch_size, as before
    flat = sorted({(7, 8, i, j) for i in range(20, 24) for j in range(5)})
    assert [len(b) for b in prefix_batches(flat, 8)] == [8, 8, 4]


def test_each_block_runs_once_and_scores_equal_plain_scoring(tiny_ckpt):
    model = load_model(tiny_ckpt)
    reqs = subject_requests()
    lms = {cache: RWKVStateLM(model=model, tokenizer=ByteTokenizer(), batch_size=4, prefix_cache=cache,
                              progress=False) for cache in (True, False)}
    got = {cache: lm._loglikelihood_tokens(reqs, disable_tqdm=True) for cache, lm in lms.items()}
    for (a, ga), (b, gb) in zip(got[True], got[False]):
        assert a == pytest.approx(b, abs=2e-4) and ga == gb
    # 3 blocks of 111 tokens once each + 9 questions' last 12 tokens (their shared prefix is the whole block)
    assert lms[True].stats["forward_tokens"] == 3 * 111 + 9 * 12

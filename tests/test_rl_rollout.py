"""The rollouts' teacher-forced log-probabilities against the recurrent decode, token by token (a float64 model;
the log-softmax over the head is float32, as in training), and the batched sampler against each row alone."""

from __future__ import annotations

import pytest
import torch

from rl_statetune.checkpoint import load_model
from rl_statetune.lm import pad_right
from rl_statetune.rl.rollout import sample_answers, sequence_logprobs, token_logprobs
from rl_statetune.state import TimeState, initial_state_fn


@pytest.fixture(scope="module")
def tuned(tiny_world_ckpt):
    model = load_model(tiny_world_ckpt, dtype=torch.float64)
    state = TimeState(model.config, torch.randn(model.config.state_shape(), dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(3)))
    return model, initial_state_fn(model, state), state


@torch.no_grad()
def reference(model, init_state, prompt: list[int], answer: list[int], temperature: float) -> list[float]:
    """Prefill the prompt alone, then one decode step per answer token: log p(token) at ``temperature``."""
    out = []
    logits, st = model(torch.tensor([prompt]), init_state(1))
    last = logits[0, -1]
    for t in answer:
        out.append(float(torch.log_softmax(last / temperature, -1)[t]))
        last, st = model.decode(torch.tensor([t]), st)
        last = last[0]
    return out


def test_token_logprobs_equal_the_recurrent_decode_and_the_mask_only_skips(tuned):
    model, init_state, state = tuned
    prompts = [[5, 900, 31, 7], [44, 2], [1000, 12, 12]]
    answers = torch.tensor([[9, 8, 7, 6], [300, 0, 0, 0], [17, 4000, 21, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    idx, lengths = pad_right(prompts, 0, "cpu")
    full = token_logprobs(model, init_state, idx, lengths, answers, 0.7)
    masked = token_logprobs(model, init_state, idx, lengths, answers, 0.7, mask)
    for n, p in enumerate(prompts):
        want = reference(model, init_state, p, answers[n].tolist(), 0.7)
        assert full[n].tolist() == pytest.approx(want, abs=2e-5)
        assert masked[n][mask[n]].tolist() == pytest.approx([w for w, m in zip(want, mask[n]) if m], abs=2e-5)
    assert (masked[~mask] == 0).all()
    (g_full,) = torch.autograd.grad((full * mask).sum(), state.time_state)
    (g_masked,) = torch.autograd.grad(masked.sum(), state.time_state)
    assert g_full.abs().max() > 0 and torch.allclose(g_masked, g_full, rtol=1e-5, atol=1e-9)
    seq = sequence_logprobs(model, init_state, idx, lengths, answers, 0.7)    # up to and with the first 0 (eos)
    assert seq.tolist() == pytest.approx([full[0].sum(), full[1, 0] + full[1, 1], full[2].sum()], abs=2e-5)


def test_sampled_answers_stop_at_a_stop_token_and_are_seeded(tuned):
    model, init_state, _ = tuned
    idx, lengths = pad_right([[5, 900, 31, 7], [44, 2]] * 8, 0, "cpu")
    stop = torch.zeros(65536, dtype=torch.bool)
    stop[torch.arange(0, 65536, 3)] = True       # a third of the vocabulary ends an answer
    ids, mask = sample_answers(model, init_state, idx, lengths, 12, 1.0, stop, torch.Generator().manual_seed(0))
    again = sample_answers(model, init_state, idx, lengths, 12, 1.0, stop, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again[0]) and torch.equal(mask, again[1])
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any() and (row[n:] == 0).all()
        assert not stop[row[: n - 1]].any() and (bool(stop[row[n - 1]]) or n == ids.shape[1])


def test_rows_that_stop_leave_the_batch_without_moving_the_others(tuned):
    """Greedy, so every row's answer is fixed: a batch whose rows stop at different steps (finished rows leave
    the recurrent batch) gives each row the answer it gets alone."""
    model, init_state, _ = tuned
    prompts = [[5, 900, 31, 7], [44, 2], [1000, 12, 12], [77], [3, 3, 3, 3, 3]]
    stop = torch.zeros(65536, dtype=torch.bool)
    stop[torch.arange(0, 65536, 4)] = True
    idx, lengths = pad_right(prompts, 0, "cpu")
    ids, mask = sample_answers(model, init_state, idx, lengths, 10, 0.0, stop)
    lens = mask.sum(1).tolist()
    assert len(set(lens)) > 2, lens                    # the rows do stop at different steps
    for n, p in enumerate(prompts):
        one, one_mask = sample_answers(model, init_state, torch.tensor([p]), torch.tensor([len(p)]), 10, 0.0, stop)
        assert ids[n][mask[n]].tolist() == one[0][one_mask[0]].tolist()

"""The ``rl_statetune`` lm-eval model on the real benchmark files: its log-likelihoods against a direct forward
of the model, the prefix cache against plain scoring, generation and rolling log-likelihood against direct calls,
and the plain ``lm_eval`` command. Needs ``../shared/data`` (or $RL_STATETUNE_SHARED_DATA); skips without it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from rl_statetune.eval.cli import task_config, task_manager as make_task_manager  # noqa: E402
from rl_statetune.eval.harness import NonFiniteScoreError, RWKVStateLM, load_init_state, tokenizer_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RL_STATETUNE_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
pytestmark = pytest.mark.skipif(not (DATA / "benchmarks").is_dir(),
                                reason=f"real benchmark files not found at {DATA}/benchmarks "
                                       "(set RL_STATETUNE_SHARED_DATA to the shared data root)")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RL_STATETUNE_SHARED_DATA", str(DATA))


@pytest.fixture(scope="module")
def model():
    from rl_statetune.checkpoint import load_model

    return load_model("embedded")


@pytest.fixture(scope="module")
def tuned(model):
    """A non-trivial tuned state: random, of the size a tuned state reaches."""
    from rl_statetune.state import TimeState, initial_state_fn

    g = torch.Generator().manual_seed(0)
    ts = TimeState(model.config, 0.3 * torch.randn(model.config.state_shape(), generator=g)).requires_grad_(False)
    return initial_state_fn(model, ts)


@pytest.fixture(scope="module")
def task_manager():
    return make_task_manager()


def instances(task_manager, task, limit, num_fewshot=None, subjects=None):
    """lm-eval's own request Instances for one of our local tasks (first ``limit`` docs)."""
    cfg = task_config(task, keep=subjects)
    loaded = task_manager.load([cfg])
    out = []
    for t in loaded["tasks"].values():
        if num_fewshot is not None:
            t.set_config("num_fewshot", num_fewshot)
        t.build_all_requests(limit=limit)
        out += t.instances
    return out


def direct_loglikelihood(model, lm, init_fn, context, continuation):
    """A full forward of context + continuation from the initial state, no batching and no cache."""
    ctx, cont = lm._encode_pair(context, continuation) if context else ([lm.eot_token_id], lm.tok_encode(continuation))
    idx = torch.tensor([ctx + cont])
    state = None if init_fn is None else init_fn(1)
    with torch.inference_mode():
        logits, _ = model(idx, state)
    lp = logits[0, len(ctx) - 1:-1].double().log_softmax(-1)
    tgt = torch.tensor(cont)
    return float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all())


@pytest.mark.parametrize("cache", [True, False], ids=["prefix_cache", "plain"])
@pytest.mark.parametrize("with_state", [False, True], ids=["base", "tuned"])
def test_loglikelihoods_equal_a_direct_forward(model, tuned, task_manager, cache, with_state):
    init_fn = tuned if with_state else None
    lm = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), init_state_fn=init_fn, batch_size=3,
                     prefix_cache=cache, min_shared_prefix=2)
    reqs = (instances(task_manager, "arc_challenge", 3) + instances(task_manager, "winogrande", 2)
            + instances(task_manager, "mmlu", 2, num_fewshot=2, subjects={"mmlu_anatomy"}))
    assert len(reqs) > 16
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    for req, (ll, greedy) in zip(reqs, got):
        want, want_greedy = direct_loglikelihood(model, lm, init_fn, *req.args)
        assert ll == pytest.approx(want, abs=2e-4, rel=1e-5), req.args
        assert greedy == want_greedy
    if with_state:  # the state is applied: scores move
        base = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), batch_size=3).loglikelihood(reqs, True)
        assert max(abs(a[0] - b[0]) for a, b in zip(base, got)) > 1e-2


def _evaluate(lm, cfg, task_manager, limit, num_fewshot=None):
    return lm_eval.simple_evaluate(model=lm, tasks=[cfg], limit=limit, num_fewshot=num_fewshot, log_samples=True,
                                   task_manager=task_manager, verbosity="ERROR")


def test_prefix_cache_gives_the_same_numbers_with_fewer_tokens(model, tuned, task_manager):
    """ARC 0-shot (choices share a context) and MMLU 5-shot (a subject's questions share the few-shot prefix)."""
    mmlu = task_config("mmlu", keep={"mmlu_anatomy", "mmlu_virology"})
    for cfg, limit, shots in [(task_config("arc_challenge"), 12, None), (mmlu, 4, 5)]:
        runs = {}
        for cache in (True, False):
            lm = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), init_state_fn=tuned, batch_size=4,
                             prefix_cache=cache)
            runs[cache] = (_evaluate(lm, cfg, task_manager, limit, shots), lm.stats["forward_tokens"])
        (on, tok_on), (off, tok_off) = runs[True], runs[False]
        assert on["results"] == off["results"]  # every metric and stderr identical
        for task in on["samples"]:
            for a, b in zip(on["samples"][task], off["samples"][task]):
                la, lb = [r[0] for r in a["filtered_resps"]], [r[0] for r in b["filtered_resps"]]
                assert la == pytest.approx(lb, abs=2e-4, rel=1e-5)
                assert [r[1] for r in a["filtered_resps"]] == [r[1] for r in b["filtered_resps"]]
        assert tok_on < 0.6 * tok_off, (tok_on, tok_off)


def test_generate_until_and_rolling_match_direct_calls(model, tuned, task_manager):
    from rl_statetune.generation import generate

    lm = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), init_state_fn=tuned, batch_size=2,
                     max_gen_toks=12)
    reqs = instances(task_manager, "gsm8k", 3, num_fewshot=1)
    got = lm.generate_until(reqs, disable_tqdm=True)
    until = reqs[0].args[1]["until"]
    want = [generate(model, lm.tokenizer, [r.args[0]], 12, init_state=tuned, stop=until)[0] for r in reqs]
    assert got == want and any(got)

    class Req:
        def __init__(self, text):
            self.args = (text,)

    texts = ["Question: 2 + 3 = ?\nAnswer: 5", "The answer is 7.", "x"]
    rolled = lm.loglikelihood_rolling([Req(t) for t in texts], disable_tqdm=True)
    for t, r in zip(texts, rolled):
        want, _ = direct_loglikelihood(model, lm, tuned, "", t)
        assert r == pytest.approx(want, abs=2e-4)


def test_nan_state_is_refused(model, tmp_path, task_manager):
    from rl_statetune.state import StateFileError, state_to_dict

    path = tmp_path / "nan.pth"
    torch.save(state_to_dict(torch.full(model.config.state_shape(), float("nan"))), path)  # save_state refuses NaN
    with pytest.raises(StateFileError, match="nan.pth.*NaN"):
        load_init_state(model, path)
    # a NaN state that bypasses the file check: scoring refuses instead of picking the first choice
    from rl_statetune.state import TimeState, initial_state_fn

    bad = initial_state_fn(model, TimeState(model.config, torch.full(model.config.state_shape(), float("nan"))))
    lm = RWKVStateLM(model=model, tokenizer=tokenizer_for(model), init_state_fn=bad)
    with pytest.raises(NonFiniteScoreError, match="NaN"):
        lm.loglikelihood(instances(task_manager, "arc_challenge", 1), disable_tqdm=True)


def test_plain_lm_eval_command_runs_offline(tmp_path):
    """``lm_eval --model rl_statetune`` (as ``python -m lm_eval`` so that this checkout is imported)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "rl_statetune", "--model_args", "pretrained=embedded",
         "--tasks", str(ROOT / "rl_statetune/eval/tasks/arc_challenge_local.yaml"), "--limit", "3",
         "--output_path", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "arc_challenge" in out.stdout and "acc_norm" in out.stdout
    assert list(tmp_path.rglob("results_*.json"))

"""Models with bfloat16 / float16 weights through every path, against the same model in float32.

States (S0, S~0, R) stay float32 and the WKV recurrence accumulates in float32 whatever the weights' dtype.
Run with ``python -P -m pytest`` (or plain ``pytest``) so that the repository's kernels/ folder does not
shadow the Hugging Face ``kernels`` package. ``RL_STATETUNE_TEST_DEVICE=cuda`` runs the model-level comparisons on
the GPU (its Triton kernels; ``scripts/gpu_session.sh half``); the command tests stay on the CPU. Tolerances, measured on the embedded reasoning model (L6 C128) for a 70-token prompt:
logits relative error 0.008 (bfloat16) / 0.001 (float16) -> bounds 0.02 / 0.004; greedy tokens identical.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from wkv_inputs import make_inputs, rel_err

from rl_statetune.checkpoint import load_model
from rl_statetune.tokenizer import WorldTokenizer
from rl_statetune.generation import generate
from rl_statetune.state import TimeState, initial_state_fn
from rl_statetune.wkv import wkv7

DEVICE = os.environ.get("RL_STATETUNE_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"RL_STATETUNE_TEST_DEVICE={DEVICE} but no CUDA device", allow_module_level=True)
# the commands (tune, rl, generate, eval) load on the CPU: run them in the default suite only
cpu_only = pytest.mark.skipif(DEVICE != "cpu", reason=f"a CPU command test (RL_STATETUNE_TEST_DEVICE={DEVICE})")
try:
    from rl_statetune.hf import RWKV7ForCausalLM  # before lm_eval: see tests/test_hf_model.py
except ImportError as e:                          # a GPU image's transformers may lack what the wrapper needs
    if DEVICE == "cpu":
        raise
    RWKV7ForCausalLM, HF_MISSING = None, f"rl_statetune.hf does not import: {e}"
HALF = [torch.bfloat16, torch.float16]
LOGIT_TOL = {torch.bfloat16: 0.02, torch.float16: 0.004}
PROMPT = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def name(dt):
    return str(dt).removeprefix("torch.")


@pytest.fixture(scope="module")
def models():
    return {dt: load_model("embedded:reason", dtype=name(dt), device=DEVICE) for dt in (torch.float32, *HALF)}


def random_state(cfg, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return TimeState(cfg, scale * torch.randn(cfg.state_shape(), generator=g)).to(DEVICE)


# -- the recurrence ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF, ids=name)
@pytest.mark.parametrize("T", [3, 40], ids=["token-loop", "chunked"])
def test_wkv_accumulates_in_float32(dtype, T):
    """Half inputs give the float32 result of the same (rounded) inputs: only y's final rounding differs."""
    r, logw, k, v, a, b, s0 = (x.to(DEVICE) for x in make_inputs(0, 2, T, 2, 16, 16, dtype=torch.float32))
    half = [x.to(dtype) for x in (r, logw, k, v, a, b)]
    y, s = wkv7(*half, s0=s0)
    y_ref, s_ref = wkv7(*[x.float() for x in half], s0=s0)
    assert s.dtype == torch.float32 and y.dtype == dtype
    assert rel_err(s, s_ref.double()) < 1e-5
    assert rel_err(y.float(), y_ref.double()) < 8e-3   # one rounding of y to half precision


# -- the model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF, ids=name)
def test_logits_and_states_match_float32(models, dtype):
    tok = WorldTokenizer()
    idx = torch.tensor([tok.encode(PROMPT)], device=DEVICE)
    more = torch.tensor([tok.encode(" 8")], device=DEVICE)
    tuned = random_state(models[torch.float32].config)
    got = {}
    for dt in (torch.float32, dtype):
        m = models[dt]
        with torch.no_grad():
            logits, s = m(idx, tuned.initial_state(m, 1))           # prefill (chunked WKV)
            step, s = m(more[:, :1], s)                              # one decoding step (token loop)
        got[dt] = (logits, step, s)
    (l32, st32, s32), (l, st, s) = got[torch.float32], got[dtype]
    assert l.dtype == dtype and s.wkv.dtype == torch.float32
    assert rel(l, l32) < LOGIT_TOL[dtype]
    assert rel(st, st32) < LOGIT_TOL[dtype]
    assert rel(s.wkv, s32.wkv) < 2 * LOGIT_TOL[dtype]
    assert (l.argmax(-1) == l32.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("dtype", HALF, ids=name)
def test_greedy_tokens_equal_float32(models, dtype):
    tok = WorldTokenizer()
    tuned = random_state(models[torch.float32].config, scale=0.2)
    for init in (None, tuned):
        outs = [generate(models[dt], tok, [PROMPT, "Question: 7 + 5 = ?\nAnswer:"], 24, stop=(),
                         init_state=initial_state_fn(models[dt], init)) for dt in (torch.float32, dtype)]
        assert outs[0] == outs[1] and all(len(o) > 10 for o in outs[0])


@pytest.mark.parametrize("dtype", HALF, ids=name)
def test_tuning_gradient_points_the_same_way(models, dtype):
    from rl_statetune.config import DataConfig
    from rl_statetune.data import collate, load_examples
    from rl_statetune.trainer import target_loss

    train, _ = load_examples(DataConfig(task="synthetic", target_format="sentence", train_size=8, eval_size=4))
    batch = collate(train[:4], WorldTokenizer(), 96)
    batch = type(batch)(**{k: v.to(DEVICE) for k, v in vars(batch).items()})
    grads, losses = {}, {}
    for dt in (torch.float32, dtype):
        state = random_state(models[dt].config, seed=1, scale=0.1)
        loss = target_loss(models[dt], state, batch)
        loss.backward()
        assert state.time_state.grad.dtype == torch.float32
        grads[dt], losses[dt] = state.time_state.grad.flatten(), float(loss)
    assert F.cosine_similarity(grads[dtype], grads[torch.float32], dim=0) > 0.85
    assert losses[dtype] == pytest.approx(losses[torch.float32], rel=0.01)


# -- upscaled state and DBP --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=name)
def test_upscaled_state_and_dbp(models, dtype):
    from rl_statetune.upscale import build_upscaled_state, dbp_step

    tok = WorldTokenizer()
    idx = torch.tensor([tok.encode(PROMPT)] * 2, device=DEVICE)
    out = {}
    for dt in (torch.float32, dtype):
        m = models[dt]
        up = build_upscaled_state(m, "rbf", 48, support="random", seed=0).to(DEVICE)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            up.lifted_state.copy_(0.5 * torch.randn(up.lifted_state.shape, generator=g))
        up.set_recording(0.5)
        logits, s = m(idx, up.initial_state(m, 2))
        logits.float().logsumexp(-1).mean().backward()
        assert s.lifted.dtype == torch.float32 and up.lifted_state.grad.dtype == torch.float32
        dbp_step(up, eta=0.1, kappa=0.5)
        assert up.lifts[0].decor.R.dtype == torch.float32
        out[dt] = (logits.detach(), up.lifted_state.grad.flatten(), up.lifts[0].decor.R.detach().clone())
    (l32, g32, R32), (l, g, R) = out[torch.float32], out[dtype]
    assert rel(l, l32) < LOGIT_TOL[dtype]
    assert F.cosine_similarity(g, g32, dim=0) > 0.98
    assert rel(R, R32) < 0.01


# -- evaluation (lm-eval model) ----------------------------------------------------------------------------------
class Req:
    def __init__(self, *args):
        self.args = args


@pytest.mark.parametrize("cache", [True, False], ids=["prefix_cache", "plain"])
def test_eval_loglikelihood_and_generate_until(models, cache):
    RWKVStateLM = pytest.importorskip("rl_statetune.eval.harness", reason="lm-eval is not installed").RWKVStateLM
    dtype = torch.bfloat16   # float16 runs the same code (slowly on CPUs without float16 arithmetic)
    tok = WorldTokenizer()
    shared = tok.encode("Question: Which number is the largest of the following list? ")
    reqs = [(None, shared + tok.encode(q), tok.encode(c)) for q in ("3, 9, 4\nAnswer:", "12, 8\nAnswer:")
            for c in (" 9", " 12", " 4 and more")]
    gens = [Req(PROMPT, {"until": ["\n"], "max_gen_toks": 12}), Req("Question: 7 + 5 = ?\nAnswer:", {"until": ["."]})]
    res = {}
    for dt in (torch.float32, dtype):
        lm = RWKVStateLM(model=models[dt], tokenizer=tok, batch_size=2, prefix_cache=cache, min_shared_prefix=4,
                         max_gen_toks=12, progress=False,
                         init_state_fn=initial_state_fn(models[dt], random_state(models[dt].config, scale=0.2)))
        # generate_until does not use the prefix cache: run it once
        res[dt] = (lm._loglikelihood_tokens(reqs, disable_tqdm=True), lm.generate_until(gens, True) if cache else [])
    (ll32, gen32), (ll, gen) = res[torch.float32], res[dtype]
    for (a, _), (b, _) in zip(ll, ll32):
        assert a == pytest.approx(b, rel=0.02, abs=0.05)
    assert gen == gen32 and (all(gen) or not cache)


def test_eval_model_takes_a_dtype_argument():
    RWKVStateLM = pytest.importorskip("rl_statetune.eval.harness", reason="lm-eval is not installed").RWKVStateLM
    lm = RWKVStateLM(pretrained="embedded:reason", dtype="bfloat16", progress=False)
    assert lm.model.emb.weight.dtype == torch.bfloat16
    (ll, _), = lm._loglikelihood_tokens([(None, [10, 20, 30], [40, 50])], disable_tqdm=True)
    assert ll < 0


# -- the Hugging Face wrapper ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_hf_wrapper(dtype):
    if RWKV7ForCausalLM is None:
        pytest.skip(HF_MISSING)
    ids = {}
    for dt in (torch.float32, dtype):
        model = RWKV7ForCausalLM.from_pretrained("embedded:reason", dtype=dt).to(DEVICE)
        model.attach_state(random_state(model.rwkv.config, scale=0.2))
        enc = torch.tensor([WorldTokenizer().encode(PROMPT)], device=DEVICE)
        out = model(input_ids=enc, labels=enc)
        out.loss.backward()
        assert model.tunable.time_state.grad.dtype == torch.float32
        ids[dt] = (model.generate(input_ids=enc, max_new_tokens=12, do_sample=False), out.logits.detach())
    assert torch.equal(ids[dtype][0], ids[torch.float32][0])
    assert rel(ids[dtype][1], ids[torch.float32][1]) < LOGIT_TOL[dtype]


# -- the commands ------------------------------------------------------------------------------------------------
@cpu_only
@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_tune_and_rl_run_with_half_weights(tiny_world_ckpt, tmp_path, dtype):
    from rl_statetune import trainer
    from rl_statetune.config import parse_config
    from rl_statetune.rl.config import RLConfig
    from rl_statetune.rl.driver import run_rl
    from rl_statetune.state import load_state

    losses = {}
    for dt in ("float32", dtype):
        cfg = parse_config({"model": {"path": str(tiny_world_ckpt), "dtype": dt},
                            "data": {"task": "synthetic", "train_size": 8, "eval_size": 4},
                            "train": {"steps": 2, "batch_size": 4, "log_every": 1, "out_dir": str(tmp_path / dt)},
                            "optim": {"lr": 0.3, "lr_final": 0.03}})
        losses[dt] = trainer.tune(cfg, progress=False, evaluate=False).final_loss
        assert load_state(tmp_path / dt / "state.pth").time_state.dtype == torch.float32
    assert losses[dtype] == pytest.approx(losses["float32"], rel=0.02)

    rl = RLConfig.model_validate({
        "model": {"path": str(tiny_world_ckpt), "dtype": dtype},
        "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True, "options": {"score_logprob": -1.0}},
        "reward": {"kind": "reverse_kl", "samples": 2},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "out_dir": str(tmp_path / "rl"), "eval": False}})
    res = run_rl(rl, progress=False)
    assert len(res.rewards) == 2 and all(r == r for r in res.rewards)
    assert torch.isfinite(load_state(tmp_path / "rl" / "state.pth").time_state).all()


@cpu_only
def test_generate_cli_takes_dtype(capsys):
    from rl_statetune.cli import main as cli_main

    assert cli_main(["generate", "--model", "embedded:reason", "--dtype", "bfloat16", "--prompt", PROMPT,
                     "--max-new-tokens", "8"]) == 0
    out32 = capsys.readouterr().out
    assert cli_main(["generate", "--model", "embedded:reason", "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == out32
    with pytest.raises(SystemExit) as e:
        cli_main(["generate", "--dtype", "int8", "--prompt", "x"])
    assert e.value.code == 2
    assert "--dtype" in capsys.readouterr().err


@cpu_only
def test_config_accepts_half_dtypes():
    from rl_statetune.config import parse_config

    assert parse_config({"model": {"dtype": "float16"}}).model.dtype == "float16"
    with pytest.raises(Exception, match="dtype"):
        parse_config({"model": {"dtype": "int8"}})


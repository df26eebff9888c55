"""A real trained RWKV-7 (rwkv.cpp's 834K byte-level test model): our loader and forward against rwkv.cpp's own
reference logits and the `rwkv` pip package's logits and per-layer states, and the lm-eval model on top of it.
Needs ../shared/data/models/rwkv7-tiny-834k (or $RL_STATETUNE_SHARED_DATA); skips without it."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RL_STATETUNE_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
DIR = DATA / "models" / "rwkv7-tiny-834k"
pytestmark = pytest.mark.skipif(not (DIR / "rwkv7-tiny-834k.pth").is_file(),
                                reason=f"real RWKV-7 834K model not found in {DIR} (set RL_STATETUNE_SHARED_DATA)")
TOKENS = [34, 105, 110]  # the bytes '"in'


@pytest.fixture(scope="module")
def model():
    from rl_statetune.checkpoint import load_model

    return load_model(DIR / "rwkv7-tiny-834k.pth")


@pytest.fixture(scope="module")
def ref():
    return np.load(DIR / "reference_rwkv_pip.npz")


def test_loads_with_the_real_shape(model):
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size) == (256, 12, 64, 1, 64)


def test_logits_match_rwkv_cpp_reference(model):
    want = torch.from_numpy(np.fromfile(DIR / "expected-logits-7v0-834K.bin", dtype=np.float32))
    with torch.inference_mode():
        logits, _ = model(torch.tensor([TOKENS]))
    assert torch.allclose(logits[0, -1], want, atol=1e-4), (logits[0, -1] - want).abs().max()
    assert logits[0, -1].argmax() == want.argmax()


def test_logits_and_states_match_the_rwkv_package(model, ref):
    assert list(ref["tokens"]) == TOKENS
    with torch.inference_mode():
        logits, state = model(torch.tensor([TOKENS]))
        nxt, _ = model(torch.tensor([[32]]), state)  # one more byte, continuing from the returned state
    assert torch.allclose(logits[0, -1], torch.from_numpy(ref["logits"]), atol=1e-4)
    assert torch.allclose(nxt[0, -1], torch.from_numpy(ref["logits_next"]), atol=1e-4)
    for i in range(model.config.n_layer):
        assert torch.allclose(state.att_x[i, 0], torch.from_numpy(ref[f"layer{i}_att_xprev"]), atol=1e-4), i
        assert torch.allclose(state.ffn_x[i, 0], torch.from_numpy(ref[f"layer{i}_ffn_xprev"]), atol=1e-4), i
        assert torch.allclose(state.wkv[i, 0], torch.from_numpy(ref[f"layer{i}_wkv"]).float(), atol=1e-4), i


def test_lm_eval_model_on_the_real_model(ref):
    pytest.importorskip("lm_eval")
    from rl_statetune.eval.harness import ByteTokenizer, RWKVStateLM

    lm = RWKVStateLM(pretrained=str(DIR / "rwkv7-tiny-834k.pth"))
    assert isinstance(lm.tokenizer, ByteTokenizer)

    class Req:
        def __init__(self, *args):
            self.args = args

    (ll, greedy), = lm.loglikelihood([Req('"in', " ")], disable_tqdm=True)
    want = torch.from_numpy(ref["logits"]).double().log_softmax(-1)
    assert ll == pytest.approx(float(want[32]), abs=1e-4) and greedy == (int(want.argmax()) == 32)
    assert math.isfinite(ll)

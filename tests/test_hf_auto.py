"""The transformers conventions a user already has: a folder saved by ``RWKV7ForCausalLM.save_pretrained`` loads
through ``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoTokenizer`` (with ``trust_remote_code=True`` in a process
that never imported rl_statetune.hf, and plainly once it is imported) with the usual keywords, runs in
``pipeline("text-generation")``, and fla-hub's RWKV-7 layout (config keys and weight names) is read and written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from rl_statetune.checkpoint import load_model, save_fla_folder, to_fla_state_dict  # noqa: E402
from rl_statetune.generation import generate  # noqa: E402
from rl_statetune.hf import RWKV7ForCausalLM, RWKV7HFConfig, world_tokenizer  # noqa: E402
from rl_statetune.state import TimeState  # noqa: E402
from rl_statetune.tokenizer import WorldTokenizer  # noqa: E402

IDX = torch.tensor([[5, 300, 7, 4000, 12, 0, 99]])
SHARED = Path(os.environ.get("RL_STATETUNE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL_834K = SHARED / "models" / "rwkv7-tiny-834k" / "rwkv7-tiny-834k.pth"


def saved_folder(ckpt, folder, state_seed=None):
    model = RWKV7ForCausalLM.from_pretrained(ckpt)
    if state_seed is not None:
        g = torch.Generator().manual_seed(state_seed)
        model.attach_state(TimeState(model.rwkv.config, torch.randn(model.rwkv.config.state_shape(), generator=g)))
    model.save_pretrained(folder, weights=True)
    world_tokenizer().save_pretrained(folder)
    return model


def test_saved_folder_is_self_contained_and_in_fla_layout(tiny_world_ckpt, tmp_path):
    model = saved_folder(tiny_world_ckpt, tmp_path / "m", state_seed=1)
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["model_type"] == "rwkv7" and conf["architectures"] == ["RWKV7ForCausalLM"]
    assert conf["auto_map"]["AutoModelForCausalLM"] == "rl_statetune_hf.RWKV7ForCausalLM"
    cfg = model.rwkv.config
    assert (conf["hidden_size"], conf["num_hidden_layers"], conf["head_dim"], conf["decay_low_rank_dim"],
            conf["a_low_rank_dim"], conf["v_low_rank_dim"], conf["gate_low_rank_dim"], conf["intermediate_size"]) == \
        (cfg.n_embd, cfg.n_layer, cfg.head_size, cfg.dim_w, cfg.dim_a, cfg.dim_v, cfg.dim_g, cfg.dim_ffn)
    assert "/" not in json.dumps({k: v for k, v in conf.items() if k != "auto_map"})  # no local path in it
    # the weights are fla's names and shapes, exactly what checkpoint.to_fla_state_dict writes
    written = load_file(str(tmp_path / "m" / "model.safetensors"))
    expected = to_fla_state_dict(load_model(tiny_world_ckpt).state_dict())
    assert set(written) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(written[k], v, rtol=0, atol=0)
    assert (tmp_path / "m" / "state.safetensors").exists()  # the tuned state beside them


def test_weights_shard_by_max_shard_size(tiny_world_ckpt, tmp_path):
    model = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    model.save_pretrained(tmp_path, weights=True, max_shard_size="2MB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "model.safetensors.index.json").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(IDX).logits, model(IDX).logits, rtol=0, atol=0)


def test_state_only_is_the_default_artefact(tiny_world_ckpt, tmp_path):
    model = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    model.new_state()
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("model*.safetensors"))
    assert json.loads((tmp_path / "config.json").read_text())["base_model"] == str(tiny_world_ckpt)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)  # weights read from base_model
    with torch.no_grad():
        torch.testing.assert_close(again(IDX).logits, model(IDX).logits, rtol=0, atol=0)


def test_trust_remote_code_in_a_process_that_never_imported_the_package(tiny_world_ckpt, tmp_path):
    model = saved_folder(tiny_world_ckpt, tmp_path / "m", state_seed=2)
    with torch.no_grad():
        ref = model(IDX).logits[0, -1]
    code = f"""
import os, sys, torch
torch.set_num_threads({torch.get_num_threads()})   # the same matmul blocking as the reference: equal bits
os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
folder = {str(tmp_path / "m")!r}
conf = AutoConfig.from_pretrained(folder, trust_remote_code=True)
m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32, device_map="cpu",
                                         revision="main")
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    out = m(torch.tensor({IDX.tolist()})).logits[0, -1]
print(type(conf).__name__, type(m).__name__, type(tok).__name__, len(tok), tok("a<|endoftext|>")["input_ids"][-1])
torch.save(out, {str(tmp_path / "out.pt")!r})
"""
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-5:] == ["RWKV7HFConfig", "RWKV7ForCausalLM", "RWKVWorldTokenizer", "65536", "0"]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), ref, rtol=0, atol=0)  # the tuned state came too


def test_auto_classes_after_import_accept_the_usual_keywords(tiny_world_ckpt, tmp_path):
    model = saved_folder(tiny_world_ckpt, tmp_path / "m")
    folder = tmp_path / "m"
    conf = AutoConfig.from_pretrained(folder)
    assert isinstance(conf, RWKV7HFConfig)
    for kw in ({"torch_dtype": torch.float64}, {"dtype": "float64", "device_map": "cpu"},
               {"config": conf, "revision": "main", "trust_remote_code": False, "dtype": torch.float64}):
        m = AutoModelForCausalLM.from_pretrained(folder, **kw)
        assert isinstance(m, RWKV7ForCausalLM) and m.dtype == torch.float64
        with torch.no_grad():
            torch.testing.assert_close(m(IDX).logits.float(), model(IDX).logits, rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Grüße 😀")["input_ids"] == WorldTokenizer().encode("Grüße 😀")
    # the project's own sources take the same keywords
    m = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt, torch_dtype=torch.float64, device_map="cpu",
                                         revision="main", trust_remote_code=True)
    assert m.dtype == torch.float64


def test_resize_token_embeddings_to_the_tokenizer_keeps_the_model(tiny_world_ckpt):
    model = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    tok = world_tokenizer()
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == 65536
    with torch.no_grad():
        before = model(IDX).logits
        model.resize_token_embeddings(len(tok))
        torch.testing.assert_close(model(IDX).logits, before, rtol=0, atol=0)
    assert tok.decode([65533, 65535]) == "" and tok.convert_ids_to_tokens(65534) == "<|reserved_65534|>"


def test_pipeline_greedy_equals_our_generate(tiny_world_ckpt, tmp_path):
    saved_folder(tiny_world_ckpt, tmp_path / "m", state_seed=3)
    model = RWKV7ForCausalLM.from_pretrained(tmp_path / "m")
    prompts = ["Q: Tom has 3 apples.\nA:", "Hello"]
    from rl_statetune.state import initial_state_fn

    ours = generate(model.rwkv, WorldTokenizer(), prompts, 12, init_state=initial_state_fn(model.rwkv, model.tunable),
                    stop=())
    gen = pipeline("text-generation", model=str(tmp_path / "m"), device="cpu")
    outs = gen(prompts, max_new_tokens=12, do_sample=False, return_full_text=False)
    got = [o[0]["generated_text"] for o in outs]
    assert got == ours
    assert len(set(ours)) == 2 and all(ours)


def _fla_folder_from(src, folder):
    save_fla_folder(load_model(src), folder)
    return folder


@pytest.mark.parametrize("which", ["real-834k", "embedded"])
def test_fla_hub_folder_loads_and_ours_is_fla_layout(which, tmp_path):
    if which == "real-834k":
        if not REAL_834K.exists():
            pytest.skip(f"shared data not found at {REAL_834K} (set RL_STATETUNE_SHARED_DATA)")
        src = str(REAL_834K)
    else:
        src = "embedded"
    ref_model = load_model(src)
    idx = IDX % ref_model.config.vocab_size
    ref, _ = ref_model(idx)
    fla = _fla_folder_from(src, tmp_path / "fla")
    conf = json.loads((fla / "config.json").read_text())
    conf.update({"fuse_norm": True, "fuse_cross_entropy": True, "attn_mode": "chunk", "bos_token_id": 0,
                 "eos_token_id": 0, "hidden_ratio": 4, "num_heads": None, "norm_first": True, "norm_bias": True})
    (fla / "config.json").write_text(json.dumps(conf))  # the keys an fla-hub config.json also carries
    m = AutoModelForCausalLM.from_pretrained(fla)
    assert isinstance(m, RWKV7ForCausalLM) and m.rwkv.config == ref_model.config
    with torch.no_grad():
        torch.testing.assert_close(m(idx).logits, ref, rtol=0, atol=0)
    m.save_pretrained(tmp_path / "ours", weights=True)
    a, b = load_file(str(fla / "model.safetensors")), load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # fla reads ours as it reads fla's
    ours_conf = json.loads((tmp_path / "ours" / "config.json").read_text())
    same = [k for k in conf if k not in ("architectures", "num_heads")]
    assert {k: ours_conf[k] for k in same} == {k: conf[k] for k in same}  # the fla keys it read, written back
    assert ours_conf["num_heads"] == conf["hidden_size"] // conf["head_dim"]


def test_folders_with_other_weight_names(tiny_world_ckpt, tmp_path):
    from safetensors.torch import save_file

    model = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    model.save_pretrained(tmp_path / "m", weights=True)
    ref = model(IDX).logits.detach()
    # BlinkDL names beside a config.json: read by the project's loader, not zero-filled by transformers
    save_file({k: v.contiguous() for k, v in load_model(tiny_world_ckpt).state_dict().items()},
              str(tmp_path / "m" / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "m")(IDX).logits, ref)
    # a weight missing from an fla-layout file is an error, not a silently initialised tensor
    sd = load_file(str(fla_file := _fla_folder_from(tiny_world_ckpt, tmp_path / "fla") / "model.safetensors"))
    del sd["model.layers.1.attn.r_proj.weight"]
    save_file(sd, str(fla_file))
    with pytest.raises(ValueError, match="missing weight 'model.rwkv.blocks.1.att.receptance.weight'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "fla")


def test_a_state_only_save_of_a_loaded_folder_names_it(tiny_world_ckpt, tmp_path):
    saved_folder(tiny_world_ckpt, tmp_path / "m", state_seed=5)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # weights + state, as a Trainer would get it
    model.save_pretrained(tmp_path / "run")  # what Trainer.save_model does: state only
    assert not (tmp_path / "run" / "model.safetensors").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(again(IDX).logits, model(IDX).logits, rtol=0, atol=0)

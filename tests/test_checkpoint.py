"""Loading weights: the fla / Hugging Face layout, and clear errors for bad files."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from rl_statetune.checkpoint import load_model
from rl_statetune.checkpoint import CheckpointError, blinkdl_key_to_fla, fla_key_to_blinkdl, save_fla_folder
from rl_statetune.model import RWKV7


def test_fla_folder_loads_to_the_same_model(tiny_ckpt, tmp_path):
    model = load_model(tiny_ckpt)
    save_fla_folder(model, tmp_path / "hf")
    keys = set(__import__("safetensors.torch", fromlist=["x"]).load_file(str(tmp_path / "hf/model.safetensors")))
    # the layout fla's converter produces
    assert "model.layers.1.attn.w_lora.lora.2.bias" in keys and "model.layers.0.attn.r_proj.weight" in keys
    assert "model.layers.0.pre_norm.weight" in keys and "lm_head.weight" in keys
    again = load_model(tmp_path / "hf")
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("key", ["blocks.1.att.w1", "blocks.0.att.x_r", "blocks.1.att.v0", "head.weight",
                                 "blocks.0.ln0.bias", "blocks.1.att.ln_x.weight", "blocks.0.ffn.x_k"])
def test_key_maps_are_inverse(key):
    fla, t1 = blinkdl_key_to_fla(key)
    back, t2 = fla_key_to_blinkdl(fla)
    assert back == key and t1 == t2


def test_missing_key_is_named(tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=True)
    del sd["blocks.1.ffn.value.weight"]
    torch.save(sd, tmp_path / "trunc.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.value\.weight"):
        load_model(tmp_path / "trunc.pth")


def test_wrong_shape_is_named(tiny_ckpt, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=True)
    sd["blocks.0.att.key.weight"] = sd["blocks.0.att.key.weight"][:, :5]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.att\.key\.weight.*shape \(32, 5\)"):
        load_model(tmp_path / "bad.pth")


def test_other_rwkv_versions_and_garbage_are_rejected(tmp_path):
    torch.save({"emb.weight": torch.zeros(4, 4), "blocks.0.att.time_decay": torch.zeros(4)}, tmp_path / "v6.pth")
    with pytest.raises(CheckpointError, match="RWKV-4/5/6"):
        load_model(tmp_path / "v6.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without"):
        load_model(tmp_path / "empty")


def test_bfloat16_loading(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.bfloat16)
    ref = load_model(tiny_ckpt)
    idx = torch.randint(0, TINY.vocab_size, (1, 12))
    lo, lr = model(idx)[0].float(), ref(idx)[0]
    assert ((lo - lr).norm() / lr.norm()).item() < 5e-2

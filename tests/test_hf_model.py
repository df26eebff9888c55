"""RWKV7ForCausalLM: the Hugging Face wrapper must compute exactly what the project's RWKV7 computes, generate
token for token what rl_statetune.generation.generate generates, read every checkpoint format we read, carry a
tuned (or upscaled) state, and save only that state."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rl_statetune.checkpoint import load_model, save_fla_folder  # noqa: E402
from rl_statetune.generation import generate  # noqa: E402
from rl_statetune.hf import RWKV7ForCausalLM, world_tokenizer  # noqa: E402
from rl_statetune.hf.modeling import padding_layout  # noqa: E402
from rl_statetune.state import TimeState, initial_state_fn  # noqa: E402
from rl_statetune.tokenizer import WorldTokenizer  # noqa: E402
from rl_statetune.upscale import build_upscaled_state  # noqa: E402

PROMPTS = ["Q: Tom has 3 apples and finds 2 more. How many apples does Tom have?\nA:",
           "Q: Mia has 5 pens.\nA:",
           "Q: Leo has 9 coins, then loses 4, then gets 7 more. How many coins does Leo have?\nA:"]


class RecordingTokenizer(WorldTokenizer):
    """Our generate decodes the whole generated id list at every step; the last call holds the row's tokens."""

    def __init__(self):
        super().__init__()
        self.last: list[int] = []

    def decode(self, ids, errors="replace"):
        self.last = list(ids)
        return super().decode(ids, errors)


@pytest.fixture(scope="module")
def hf_tok():
    return world_tokenizer()


@pytest.fixture(scope="module")
def embedded():
    return RWKV7ForCausalLM.from_pretrained("embedded")


def ours_token_ids(rwkv, prompts, n, tunable=None):
    """Our greedy decoder's generated ids, one prompt at a time (no stop strings)."""
    tok = RecordingTokenizer()
    out = []
    for p in prompts:
        tok.last = []
        generate(rwkv, tok, [p], n, init_state=initial_state_fn(rwkv, tunable), stop=())
        out.append(tok.last)
    return out


def hf_token_ids(model, hf_tok, prompts, n):
    """model.generate on the whole batch, left padded; the new ids cut at the first end of text."""
    enc = hf_tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        rows.append(row[: row.index(0)] if 0 in row else row)
    return rows


@pytest.fixture(scope="module")
def tuned_state(embedded):
    """A state that really changes what the embedded model writes: a few steps of our own state tuning towards
    the "The answer is N." format (the frozen model writes "#### N")."""
    from rl_statetune.config import DataConfig
    from rl_statetune.data import collate, load_examples
    from rl_statetune.trainer import target_loss

    train, _ = load_examples(DataConfig(task="synthetic", target_format="sentence", train_size=64, eval_size=8))
    state, tok = TimeState(embedded.rwkv.config), WorldTokenizer()
    opt = torch.optim.Adam(state.parameters(), lr=1.0)
    for step in range(12):
        opt.zero_grad()
        target_loss(embedded.rwkv, state, collate(train[8 * (step % 8): 8 * (step % 8) + 8], tok, 128)).backward()
        opt.step()
    return state


def random_state(cfg, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return TimeState(cfg, torch.randn(cfg.state_shape(), generator=g) * scale)


def test_generate_equals_ours_token_for_token(embedded, hf_tok):
    ours = ours_token_ids(embedded.rwkv, PROMPTS, 24)
    assert all(len(o) >= 10 for o in ours)  # the comparison covers real decoding, not an immediate end of text
    assert hf_token_ids(embedded, hf_tok, PROMPTS, 24) == ours


def test_generate_with_a_tuned_state_equals_ours(embedded, hf_tok, tuned_state):
    state = tuned_state
    plain = ours_token_ids(embedded.rwkv, PROMPTS, 16)
    ours = ours_token_ids(embedded.rwkv, PROMPTS, 16, state)
    assert ours != plain  # the state changes what the model writes
    embedded.attach_state(state)
    try:
        assert hf_token_ids(embedded, hf_tok, PROMPTS, 16) == ours
    finally:
        embedded.attach_state(None)


def test_generate_with_an_upscaled_state_equals_ours(tiny_world_ckpt, hf_tok):
    model = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    up = build_upscaled_state(model.rwkv, "rbf", 24, support="random", seed=0)
    with torch.no_grad():
        up.lifted_state.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
        up.time_state.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    ours = ours_token_ids(model.rwkv, PROMPTS, 12, up)
    model.attach_state(up)
    assert hf_token_ids(model, hf_tok, PROMPTS, 12) == ours


def both_sides(hf_tok, prompts):
    """Left-padded prompt + right-padded tail, as TRL's GRPO builds prompt + completion."""
    left = hf_tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    tails = [[7, 8, 9][: 1 + i % 3] for i in range(len(prompts))]
    width = max(map(len, tails))
    ids = torch.cat([left["input_ids"], torch.tensor([t + [0] * (width - len(t)) for t in tails])], 1)
    mask = torch.cat([left["attention_mask"], torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails])],
                     1)
    return {"input_ids": ids, "attention_mask": mask}, [hf_tok(p)["input_ids"] + t for p, t in zip(prompts, tails)]


@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_padded_forward_equals_each_row_alone(embedded, hf_tok, side):
    state = random_state(embedded.rwkv.config, seed=2)
    embedded.attach_state(state)
    try:
        if side == "both":
            enc, rows = both_sides(hf_tok, PROMPTS)
        else:
            enc = hf_tok(PROMPTS, return_tensors="pt", padding=True, padding_side=side)
            rows = [hf_tok(p)["input_ids"] for p in PROMPTS]
        with torch.no_grad():
            out = embedded(**enc)
            for b, row in enumerate(rows):
                ids = torch.tensor([row])
                ref, ref_state = embedded.rwkv(ids, state.initial_state(embedded.rwkv, 1))
                real = enc["attention_mask"][b].bool()
                torch.testing.assert_close(out.logits[b][real], ref[0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.cache.state.wkv[:, b], ref_state.wkv[:, 0], rtol=1e-5, atol=1e-5)
    finally:
        embedded.attach_state(None)


def test_padding_layout_rejects_holes():
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="contiguous"):
        padding_layout(ids, torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="no real tokens"):
        padding_layout(ids, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))


def test_from_pretrained_reads_our_formats(tiny_world_ckpt, tmp_path):
    idx = torch.tensor([[5, 300, 7, 4000, 12]])
    ref, _ = load_model(tiny_world_ckpt)(idx)
    fla = tmp_path / "fla"
    save_fla_folder(load_model(tiny_world_ckpt), fla)
    for src in (tiny_world_ckpt, str(tiny_world_ckpt), fla):
        m = RWKV7ForCausalLM.from_pretrained(src)
        with torch.no_grad():
            torch.testing.assert_close(m(idx).logits, ref, rtol=1e-5, atol=1e-5)
    emb = RWKV7ForCausalLM.from_pretrained("embedded")
    with torch.no_grad():
        torch.testing.assert_close(emb(idx).logits, load_model("embedded")(idx)[0])


def test_labels_loss_is_the_shifted_cross_entropy(tiny_world_ckpt):
    m = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    idx = torch.tensor([[5, 300, 7, 4000, 12]])
    labels = idx.clone()
    labels[0, :2] = -100
    out = m(idx, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[0, 1:-1], idx[0, 2:])
    torch.testing.assert_close(out.loss, ref)


def test_only_the_state_is_trainable_and_it_gets_gradients(tiny_world_ckpt):
    m = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    assert not any(p.requires_grad for p in m.parameters())
    m.new_state()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == ["model.tunable.time_state"]
    idx = torch.tensor([[5, 300, 7, 4000, 12]])
    m(idx, labels=idx).loss.backward()
    assert m.tunable.time_state.grad is not None and m.tunable.time_state.grad.abs().sum() > 0


def test_save_pretrained_writes_the_state_only_and_round_trips(tiny_world_ckpt, tmp_path, hf_tok):
    m = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    m.attach_state(random_state(m.rwkv.config, seed=4))
    m.save_pretrained(tmp_path / "saved")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == ["config.json", "generation_config.json", "rl_statetune_hf.py", "state.pth",
                     "state.safetensors"]
    weights = sum(p.numel() * p.element_size() for p in m.rwkv.parameters())
    state_bytes = (tmp_path / "saved" / "state.safetensors").stat().st_size
    assert state_bytes < weights / 4  # the folder holds the state, not the 65536-token embedding and head
    again = RWKV7ForCausalLM.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(again.tunable.time_state, m.tunable.time_state)
    assert hf_token_ids(again, hf_tok, PROMPTS[:2], 8) == hf_token_ids(m, hf_tok, PROMPTS[:2], 8)


def test_upscaled_state_file_attaches(tiny_world_ckpt, tmp_path):
    from rl_statetune.upscale import UpscaledState

    m = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt)
    up = build_upscaled_state(m.rwkv, "rbf", 16, support="random", seed=0)
    with torch.no_grad():
        up.lifted_state.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    m.attach_state(up)
    m.save_pretrained(tmp_path / "up")
    again = RWKV7ForCausalLM.from_pretrained(tiny_world_ckpt, state=tmp_path / "up" / "state.safetensors")
    assert isinstance(again.tunable, UpscaledState)
    idx = torch.tensor([[5, 300, 7, 4000, 12]])
    with torch.no_grad():
        torch.testing.assert_close(again(idx).logits, m(idx).logits)

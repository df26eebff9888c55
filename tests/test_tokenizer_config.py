"""World tokenizer round trips and strict YAML configs."""

from __future__ import annotations

import pytest

from rl_statetune.config import ConfigError, TuneConfig, load_config
from rl_statetune.tokenizer import WorldTokenizer


@pytest.mark.parametrize("text", ["Hello, world!", "Größe × 3 → ∞", "日本語のテキストと中文", "emoji 🎉🧪 mixed\n\ttabs",
                                  "Q: Tom has 3 apples.\nA: 3 + 4 = 7. #### 7\n", ""])
def test_world_tokenizer_round_trip(text):
    tok = WorldTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 < i < 65536 for i in ids)


def test_world_tokenizer_known_ids():
    tok = WorldTokenizer()
    assert tok.encode("\n") == [11]          # the world vocab's newline id
    assert len(tok.encode(" apples")) == 1   # whole words are single tokens
    assert tok.decode([0]) == ""             # end of text decodes to nothing


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_loads_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  steps: 7\noptim:\n  lr: 0.5\n"), overrides=["train.batch_size=3"])
    assert isinstance(cfg, TuneConfig)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.optim.lr, cfg.model.path) == (7, 3, 0.5, "embedded")


@pytest.mark.parametrize("text,msg", [
    ("train:\n  stepz: 3\n", r"train\.stepz: Extra inputs are not permitted"),
    ("optim:\n  lr: -1\n", r"optim\.lr: Input should be greater than 0"),
    ("model:\n  dtype: float8\n", r"model\.dtype"),
    ("data:\n  task: jsonl\n", r"data\.path is required"),
    ("- 1\n- 2\n", "top level must be a mapping"),
])
def test_config_errors_name_the_field(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(write(tmp_path, text))

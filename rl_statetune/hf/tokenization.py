"""``RWKVWorldTokenizer``: the RWKV world vocabulary as a Hugging Face ``PreTrainedTokenizer``.

Encoding and decoding are ``rl_statetune.tokenizer.WorldTokenizer``'s (the `rwkv` package's greedy longest-match
trie over UTF-8 bytes), so ids are equal to ours for every text. Hugging Face tokens are strings: each world token
(a byte string) is named by its bytes read as Latin-1, a one-to-one map, and ``convert_tokens_to_string`` joins the
bytes and decodes them as UTF-8 (invalid bytes replaced, as ours).

Id 0 is end of text (``<|endoftext|>``, also the pad token), as a Hugging Face special token: the text
``"<|endoftext|>"`` encodes to id 0 (what TRL appends as eos), unless ``split_special_tokens=True`` is asked for
(then it is text, as in the RWKV runtimes). The world vocabulary has 65530 ids for a 65536-row embedding: ids
65530-65535 are reserved tokens (``<|reserved_65530|>`` ...) that no text encodes to and that decode to nothing, so
``len(tokenizer)`` is the embedding's row count and ``resize_token_embeddings(len(tokenizer))`` keeps the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import AddedToken, PreTrainedTokenizer

from rl_statetune.tokenizer import VOCAB_NAME, WorldTokenizer, default_vocab_path

EOS = "<|endoftext|>"
ROWS = 65536  # the world models' embedding rows
AUTO_MAP = {"AutoTokenizer": ["rl_statetune_hf.RWKVWorldTokenizer", None]}


class RWKVWorldTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": VOCAB_NAME}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, **kwargs):
        self.world = WorldTokenizer(vocab_file)
        self.vocab_file = str(self.world.vocab_path)
        idx2token = self.world._trie.idx2token
        self._id_to_str = {i: b.decode("latin-1") for i, b in idx2token.items()}
        self._str_to_id = {s: i for i, s in self._id_to_str.items()}
        self._reserved = {i: f"<|reserved_{i}|>" for i in range(max(idx2token) + 1, ROWS)}
        self._added_tokens_decoder = {0: AddedToken(EOS, special=True, normalized=False)}
        for key in ("eos_token", "pad_token", "unk_token"):
            kwargs.setdefault(key, EOS)
        kwargs.setdefault("bos_token", None)
        kwargs.setdefault("split_special_tokens", False)
        kwargs.setdefault("auto_map", AUTO_MAP)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("padding_side", "right")
        super().__init__(**kwargs)

    # -- vocabulary ----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.world.vocab_size + len(self._reserved)

    def get_vocab(self) -> dict[str, int]:
        return {**self._str_to_id, EOS: 0, **{s: i for i, s in self._reserved.items()}}

    def _convert_token_to_id(self, token: str) -> int:
        if token not in self._str_to_id:
            raise KeyError(f"{token!r} is not a token of the RWKV world vocabulary")
        return self._str_to_id[token]

    def _convert_id_to_token(self, index: int) -> str:
        if index == 0:
            return EOS
        if index in self._reserved:
            return self._reserved[index]
        if index not in self._id_to_str:
            raise KeyError(f"id {index} is not in the RWKV world vocabulary")
        return self._id_to_str[index]

    # -- text <-> tokens -----------------------------------------------------------------------------------------
    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._id_to_str[i] for i in self.world.encode(text)]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        skip = {EOS, *self._reserved.values()}
        return b"".join(b"" if t in skip else t.encode("latin-1") for t in tokens).decode("utf-8", errors="replace")

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        ids = [i for i in ids if i not in self._reserved]
        if not skip_special_tokens and 0 in ids:  # keep the end-of-text marker visible, as HF tokenizers do
            parts, cur = [], []
            for i in ids:
                if i == 0:
                    parts.append(self.world.decode(cur))
                    parts.append(EOS)
                    cur = []
                else:
                    cur.append(i)
            parts.append(self.world.decode(cur))
            return "".join(parts)
        return self.world.decode(ids)

    # -- files ---------------------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        out = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_NAME)
        if Path(self.vocab_file).resolve() != out.resolve():
            shutil.copyfile(self.vocab_file, out)
        from rl_statetune.hf.modeling import write_shim

        write_shim(save_directory)  # what auto_map names, for AutoTokenizer with trust_remote_code=True
        return (str(out),)


def world_tokenizer(**kwargs) -> RWKVWorldTokenizer:
    """The tokenizer on the vocabulary file that ships inside the `rwkv` package."""
    return RWKVWorldTokenizer(str(default_vocab_path()), **kwargs)


__all__ = ["RWKVWorldTokenizer", "world_tokenizer", "EOS"]
